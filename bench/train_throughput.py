"""Training throughput, side by side in one run: our loop (batched tensor augmentation, channels_last)
against the common per-sample style (a DataLoader over PIL images with torchvision transforms, NCHW).

Same model, same source images, same augmentation families and magnitudes, same batch size and optimizer.
Prints images/second for both and the ratio. Usage: python bench/train_throughput.py [--images N] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from groundwork.data.embedded import load_source_raw
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params, load_params
from groundwork.training.loop import fit, seed_everything, supervised
from groundwork.training.transforms import online_augmentation


class PILDigits(Dataset):
    """One PIL image per item, transformed one at a time: the tutorial pattern."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def per_sample_transform(params: Params) -> transforms.Compose:
    """The augment section's families as per-sample PIL transforms."""
    cfg = params.augment
    blur_kernel = 2 * int(np.ceil(3 * cfg.blur.sigma[1])) + 1
    return transforms.Compose([
        transforms.RandomApply([transforms.RandomAffine(
            degrees=cfg.rotation.degrees, translate=(cfg.translate.fraction,) * 2, scale=cfg.scale.range)],
            p=cfg.rotation.probability),
        transforms.RandomApply([transforms.ColorJitter(brightness=cfg.brightness.magnitude,
                                                       contrast=cfg.contrast.magnitude)],
                               p=cfg.brightness.probability),
        transforms.RandomApply([transforms.GaussianBlur(blur_kernel, sigma=cfg.blur.sigma)], p=cfg.blur.probability),
        transforms.ToTensor(),
    ])


def naive_epoch(params: Params, images: np.ndarray, labels: np.ndarray) -> float:
    """One epoch of the per-sample loop; returns seconds."""
    seed_everything(params.seed)
    model = DigitNet(params.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.pretrain.lr)
    loader = DataLoader(PILDigits(images, labels, per_sample_transform(params)),
                        batch_size=params.pretrain.batch_size, shuffle=True, drop_last=True)
    started = time.perf_counter()
    model.train()
    for inputs, targets in loader:
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def our_epoch(params: Params, images: np.ndarray, labels: np.ndarray) -> float:
    """One epoch of the project's loop with on-the-fly batched augmentation; returns seconds."""
    seed_everything(params.seed)
    model = DigitNet(params.model)
    cfg = params.pretrain.model_copy(update={"epochs": 1, "schedule": "none", "warmup_epochs": 0})
    started = time.perf_counter()
    fit(model, (torch.from_numpy(images), torch.from_numpy(labels)), cfg, device=torch.device("cpu"),
        seed=params.seed, objective=supervised(online_augmentation(params.augment)), desc="bench")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000, help="source images per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per loop (median reported)")
    args = parser.parse_args()
    params = load_params()
    images, labels = load_source_raw()
    images, labels = images[:args.images], labels[:args.images]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(labels)} images/epoch, "
          f"batch {params.pretrain.batch_size}, model channels {list(params.model.channels)}")
    naive_epoch(params, images[:512], labels[:512])  # warm-up both: first-call allocations and kernel choice
    our_epoch(params, images[:512], labels[:512])
    timings: dict[str, list[float]] = {"naive per-sample PIL DataLoader": [], "ours (batched, channels_last)": []}
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        timings["naive per-sample PIL DataLoader"].append(naive_epoch(params, images, labels))
        timings["ours (batched, channels_last)"].append(our_epoch(params, images, labels))
    rates = {name: len(labels) / statistics.median(seconds) for name, seconds in timings.items()}
    for name, rate in rates.items():
        print(f"{name:34s} {rate:8.0f} images/s  (median of {args.repeats} epochs)")
    naive, ours = rates.values()
    print(f"ratio ours / naive: {ours / naive:.2f}x")


if __name__ == "__main__":
    main()
