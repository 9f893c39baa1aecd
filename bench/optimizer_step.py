"""The optimizer step, side by side in one run: the implementation `groundwork.training.loop.build_optimizer` gets
(torch's default for the device: on the CPU, a loop over the parameters) against torch's foreach and fused ones,
for each optimizer the params offer, inside real training steps of the default model (forward and backward on a
batch of digit-sized inputs, then the step).

Each round trains a fresh model for `--steps` steps with each implementation in turn, so all see the same machine
load; the step alone is timed, and so is the whole training step. Prints medians over the rounds and the ratios to
the default.
Usage: PYTHONPATH=. .venv/bin/python bench/optimizer_step.py [--batch N] [--steps S] [--rounds R]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch
from torch import nn

from groundwork.models.digitnet import DigitNet
from groundwork.params import Params, load_params
from groundwork.training.loop import build_optimizer

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
IMPLEMENTATIONS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def implemented(optimizer: torch.optim.Optimizer, choice: dict[str, bool]) -> torch.optim.Optimizer:
    """The same optimizer and settings as `optimizer`, in the implementation `choice` names."""
    if not choice:
        return optimizer
    accepted = inspect.signature(type(optimizer)).parameters
    settings = {key: value for key, value in optimizer.defaults.items() if key in accepted}
    return type(optimizer)(optimizer.param_groups[0]["params"], **{**settings, **choice})


def timed_steps(params: Params, name: str, choice: dict[str, bool], batch: int, steps: int) -> tuple[float, float]:
    """Median seconds of the optimizer step and of the whole training step, over `steps` steps after 5 untimed."""
    torch.manual_seed(params.seed)
    model = DigitNet(params.model).to(memory_format=torch.channels_last).train()
    cfg = params.pretrain.model_copy(update={"optimizer": name})
    optimizer = implemented(build_optimizer([{"params": list(model.parameters())}], cfg), choice)
    inputs = torch.rand(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(10, (batch,))
    step_times, total_times = [], []
    for index in range(steps + 5):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(inputs), labels).backward()
        stepping = time.perf_counter()
        optimizer.step()
        ended = time.perf_counter()
        if index >= 5:
            step_times.append(ended - stepping)
            total_times.append(ended - started)
    return statistics.median(step_times), statistics.median(total_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="images per step (compress and the budget sweep: 32)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per implementation, interleaved")
    args = parser.parse_args()
    params = load_params()
    count = sum(p.numel() for p in DigitNet(params.model).parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, default model ({count:,} parameters), "
          f"batch {args.batch}, medians of {args.rounds} x {args.steps} steps; ms, and the ratio to the default")
    for name in OPTIMIZERS:
        runs: dict[str, list[tuple[float, float]]] = {kind: [] for kind in IMPLEMENTATIONS}
        for _ in range(args.rounds):
            for kind, choice in IMPLEMENTATIONS.items():
                runs[kind].append(timed_steps(params, name, choice, args.batch, args.steps))
        medians = {kind: [statistics.median(values) for values in zip(*timings, strict=True)]
                   for kind, timings in runs.items()}
        step, total = medians["default"]
        print(f"{name:9s} default: step {1000 * step:5.2f}, training step {1000 * total:6.1f}", end="")
        for kind in ("foreach", "fused"):
            other_step, other_total = medians[kind]
            print(f" | {kind}: step {1000 * other_step:5.2f} ({step / other_step:3.1f}x), training step "
                  f"{1000 * other_total:6.1f} ({total / other_total:4.2f}x)", end="")
        print()


if __name__ == "__main__":
    main()
