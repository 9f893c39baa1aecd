"""What a model is: DigitNet, its factorised layers, and self-describing checkpoints."""
