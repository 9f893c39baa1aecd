"""Datasets: the on-disk format, atomic writes, the embedded and torchvision sources, the input format, splits."""
