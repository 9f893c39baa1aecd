"""The one training loop and what plugs into it: augmentation, objectives, pretraining, transfer, DDP, resume."""
