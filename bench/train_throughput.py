"""Training throughput, side by side in one run: our loop (batched tensor augmentation, channels_last) in fp32 and
with bf16 autocast (`precision: bf16`; `auto` picks it where the CPU has bf16 natively), against the common
per-sample style (a DataLoader over PIL images with torchvision transforms, NCHW, fp32).

Same model, same source images, same augmentation families and magnitudes, same batch size and optimizer. Each
timed epoch trains a fresh model on `--images` digits drawn with the seed; its accuracy on 1,000 others (never
trained on) is reported beside its speed, so a faster loop that learns less shows. Prints images/second, the ratio
to the naive loop and the held-out accuracy, medians over `--repeats` interleaved epochs.
With `--compile`, a fourth loop: ours in fp32 with the model wrapped in `torch.compile` (the default inductor
backend), its compile time (the warm-up's first batches) printed beside its speed.

Against the machine, not only the naive loop: the training step's arithmetic per image (forward and backward, counted
by torch's FlopCounterMode on one batch) times each loop's images/second is its achieved FLOP/s, printed beside the
machine's matrix-multiply peak measured on the same threads (a square matmul, fp32 and bf16), and their ratio.
Usage: python bench/train_throughput.py [--images N] [--repeats R] [--compile]
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
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from groundwork.data.embedded import load_source_raw
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params, load_params
from groundwork.training.loop import fit, loss_and_accuracy, seed_everything, supervised
from groundwork.training.precision import bf16_native
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


Epoch = tuple[float, float]  # (seconds, held-out accuracy)


def held_out_accuracy(model: nn.Module, held_out: tuple[np.ndarray, np.ndarray]) -> float:
    images, labels = held_out
    return loss_and_accuracy(model, torch.from_numpy(images), torch.from_numpy(labels),
                             device=torch.device("cpu"))["accuracy"]


def naive_epoch(params: Params, images: np.ndarray, labels: np.ndarray, held_out: tuple[np.ndarray, np.ndarray]
                ) -> Epoch:
    """One epoch of the per-sample loop."""
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
    return time.perf_counter() - started, held_out_accuracy(model, held_out)


def our_epoch(params: Params, images: np.ndarray, labels: np.ndarray, held_out: tuple[np.ndarray, np.ndarray],
              precision: torch.dtype | None, compiled: bool = False) -> Epoch:
    """One epoch of the project's loop with on-the-fly batched augmentation, training steps at `precision`, the
    model wrapped in torch.compile when `compiled` (compiled code is cached per process: only the first epoch
    compiles)."""
    seed_everything(params.seed)
    model = DigitNet(params.model)
    if compiled:
        model = torch.compile(model)
    cfg = params.pretrain.model_copy(update={"epochs": 1, "schedule": "none", "warmup_epochs": 0})
    started = time.perf_counter()
    fit(model, (torch.from_numpy(images), torch.from_numpy(labels)), cfg, device=torch.device("cpu"),
        seed=params.seed, objective=supervised(online_augmentation(params.augment)), desc="bench",
        precision=precision)
    return time.perf_counter() - started, held_out_accuracy(model, held_out)


def training_flops_per_image(params: Params, batch: int) -> float:
    """Floating-point operations of one training step's forward and backward passes, per image (a multiply-add
    counts two), as torch's FlopCounterMode counts them on one batch of the default model."""
    model = DigitNet(params.model)
    images = torch.rand(batch, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(images), torch.zeros(batch, dtype=torch.long)).backward()
    return counter.get_total_flops() / batch


def matmul_peak(dtype: torch.dtype, size: int = 1024, repeats: int = 20) -> float:
    """FLOP/s of a square matrix multiply in `dtype` on torch's threads: the best of `repeats` (a peak, not a
    typical rate)."""
    a, b = torch.rand(size, size, dtype=dtype), torch.rand(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000, help="source images per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per loop (median reported)")
    parser.add_argument("--compile", action="store_true", help="also time our fp32 loop under torch.compile")
    args = parser.parse_args()
    params = load_params()
    all_images, all_labels = load_source_raw()
    order = np.random.default_rng(params.seed).permutation(len(all_labels))  # the file is sorted by class
    train, test = order[:args.images], order[-1000:]
    if args.images > len(order) - 1000:
        parser.error(f"--images: at most {len(order) - 1000} (1,000 digits are held out)")
    images, labels = all_images[train], all_labels[train]
    held_out = all_images[test], all_labels[test]
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(labels)} images/epoch, "
          f"batch {params.pretrain.batch_size}, model channels {list(params.model.channels)}, "
          f"{len(held_out[1])} held-out digits; bf16 native on this CPU: {bf16_native(cpu)}")
    loops: dict[str, Callable[[np.ndarray, np.ndarray], Epoch]] = {
        "naive per-sample PIL DataLoader": lambda x, y: naive_epoch(params, x, y, held_out),
        "ours, fp32": lambda x, y: our_epoch(params, x, y, held_out, None),
        "ours, bf16 autocast": lambda x, y: our_epoch(params, x, y, held_out, torch.bfloat16),
    }
    if args.compile:
        loops["ours, fp32, torch.compile"] = lambda x, y: our_epoch(params, x, y, held_out, None, compiled=True)
    warm_up: dict[str, float] = {}
    for name, epoch in loops.items():  # warm-up all: first-call allocations, kernel choice, compilation
        warm_up[name], _ = epoch(images[:512], labels[:512])
    runs: dict[str, list[Epoch]] = {name: [] for name in loops}
    for _ in range(args.repeats):  # interleaved, so all see the same machine load
        for name, epoch in loops.items():
            runs[name].append(epoch(images, labels))
    rates = {name: len(labels) / statistics.median(s for s, _ in epochs) for name, epochs in runs.items()}
    naive = rates["naive per-sample PIL DataLoader"]
    for name, epochs in runs.items():
        accuracy = statistics.median(a for _, a in epochs)
        print(f"{name:32s} {rates[name]:7.0f} images/s  {rates[name] / naive:5.2f}x naive   "
              f"held-out accuracy {100 * accuracy:.2f}%  (medians of {args.repeats} epochs)")
    flops = training_flops_per_image(params, params.pretrain.batch_size)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"training step: {flops / 1e6:.2f} MFLOP per image (forward and backward); matrix-multiply peak on "
          f"{torch.get_num_threads()} threads: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} "
          "GFLOP/s (1024 x 1024, best of 20)")
    for name, dtype in (("ours, fp32", "fp32"), ("ours, bf16 autocast", "bf16")):
        achieved = flops * rates[name]
        if dtype == "bf16" and not bf16_native(cpu):  # a software path: its matmul rate is no peak to aim at
            print(f"{name:32s} {achieved / 1e9:7.1f} GFLOP/s achieved; bf16 is emulated on this CPU, so no share of "
                  "a bf16 peak is given")
        else:
            print(f"{name:32s} {achieved / 1e9:7.1f} GFLOP/s achieved = {achieved / peaks[dtype]:.0%} of the "
                  f"{dtype} matmul peak")
    if args.compile:
        name = "ours, fp32, torch.compile"
        print(f"torch.compile: warm-up epoch of 512 images {warm_up[name]:.1f} s against {warm_up['ours, fp32']:.1f} s "
              "uncompiled (the difference is compilation)")

if __name__ == "__main__":
    main()
