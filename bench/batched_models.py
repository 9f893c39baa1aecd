"""Several same-shaped models trained as one batched computation against one after the other, side by side in one
run: the budget sweep's case (its draws of a budget share the architecture, the batch size and the step count).

Batched: the models' parameters and buffers stacked (`torch.func.stack_module_state`) and one training step of all
of them through `torch.vmap` over `torch.func.functional_call`, each model on its own batch, with its own dropout
draws and BatchNorm statistics; the loss is the sum of the models' mean losses, so each model gets its own gradient,
and Adam's state is elementwise, so each keeps its own. Grouped: the same K models as one network whose convolutions
have K groups, whose BatchNorms have K times the channels (per channel, so per model) and whose dense layers are
batched matrix products (`GroupedLinear`): the other way the models' arithmetic can be fused. One after the other:
each model's own step, as the sweep trains today. All on the default model of params.yaml (its widths; the grouped
network is built for timing, not loaded with the models' weights), on the same threads: forward, backward and Adam
step.

Usage: PYTHONPATH=. .venv/bin/python bench/batched_models.py [--models 3] [--steps 20] [--threads N] [--bf16]
(--bf16: every forward pass under bf16 autocast, as `precision: auto` trains where bf16 is native)
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state
from torch.nn import functional

from groundwork.models.digitnet import DigitNet
from groundwork.params import ModelParams, load_params
from groundwork.training.precision import autocast


def timed(step: Callable[[], None], steps: int, precision: torch.dtype | None) -> float:
    """Milliseconds per step, after three warm-up steps; under autocast to `precision` unless it is None."""
    with autocast(torch.device("cpu"), precision):  # the backward passes follow the forward's dtypes
        for _ in range(3):
            step()
        started = time.perf_counter()
        for _ in range(steps):
            step()
    return (time.perf_counter() - started) / steps * 1000


def one_after_another(models: list[DigitNet], images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    optimizers = [torch.optim.Adam(model.parameters(), 1e-3) for model in models]

    def step() -> None:
        for model, optimizer, x, y in zip(models, optimizers, images, labels, strict=True):
            loss = functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return step


def batched(models: list[DigitNet], images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    parameters, buffers = stack_module_state(models)
    parameters = {name: value.detach().requires_grad_() for name, value in parameters.items()}
    skeleton = copy.deepcopy(models[0]).to("meta")

    def forward(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, (p, b), (x,))

    all_models = torch.vmap(forward, randomness="different")  # each model its own dropout draws
    optimizer = torch.optim.Adam(parameters.values(), 1e-3)

    def step() -> None:
        logits = all_models(parameters, buffers, images)
        loss = functional.cross_entropy(logits.flatten(0, 1), labels.flatten()) * len(models)  # sum of means
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


class GroupedLinear(nn.Module):
    """K dense layers at once: (batch, K, inputs) to (batch, K, outputs), one batched matrix product."""

    def __init__(self, models: int, inputs: int, outputs: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(models, inputs, outputs) / inputs ** 0.5)
        self.bias = nn.Parameter(torch.zeros(models, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bki,kio->bko", x, self.weight) + self.bias


class GroupedNet(nn.Module):
    """K copies of the default CNN's shape as one network: image k of a batch row is model k's input."""

    def __init__(self, arch: ModelParams, models: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 1
        for channels in arch.channels:
            for _ in range(2):
                layers += [nn.Conv2d(width * models, channels * models, 3, padding=1, groups=models, bias=False),
                           nn.BatchNorm2d(channels * models), nn.ReLU(inplace=True)]
                width = channels
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.models = models
        side = 28 // 2 ** len(arch.channels)
        self.embed = GroupedLinear(models, width * side * side, arch.embedding_dim)
        self.embed_norm = nn.BatchNorm1d(arch.embedding_dim * models)
        self.head = nn.Sequential(nn.Dropout(arch.dropout), GroupedLinear(models, arch.embedding_dim, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (K, batch, 1, 28, 28) as the others take them
        x = self.features(images.squeeze(2).transpose(0, 1).contiguous(memory_format=torch.channels_last))
        x = self.embed(x.flatten(1).unflatten(1, (self.models, -1)))
        x = functional.relu(self.embed_norm(x.flatten(1)).unflatten(1, (self.models, -1)))
        return self.head(x).transpose(0, 1)  # (K, batch, 10)


def grouped(arch: ModelParams, models: int, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    network = GroupedNet(arch, models).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(network.parameters(), 1e-3)

    def step() -> None:
        loss = functional.cross_entropy(network(images).flatten(0, 1), labels.flatten()) * models  # sum of means
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=3, help="models trained together (default: budget.draws)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--bf16", action="store_true", help="forward passes under bf16 autocast")
    args = parser.parse_args()
    precision = torch.bfloat16 if args.bf16 else None
    torch.set_num_threads(args.threads)
    params = load_params("params.yaml")
    labelled = params.transfer.batch_size
    semi = labelled * (1 + params.transfer.semi_supervised.ratio)  # FixMatch: the labelled batch and strong views
    print(f"{args.models} models of the default architecture, {args.threads} thread(s), {args.steps} steps each way, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}")
    print("| batch per model | one after another, ms/step | vmap, ms/step (speed-up) | grouped, ms/step (speed-up) |")
    print("| --- | --- | --- | --- |")
    for batch in (labelled, semi):
        torch.manual_seed(0)
        models = [DigitNet(params.model).to(memory_format=torch.channels_last) for _ in range(args.models)]
        images = torch.randn(args.models, batch, 1, 28, 28)
        labels = torch.randint(0, 10, (args.models, batch))
        sequential = timed(one_after_another(copy.deepcopy(models), images, labels), args.steps, precision)
        try:
            vmapped = timed(batched(models, images, labels), args.steps, precision)
            vmap_cell = f"{vmapped:.1f} ({sequential / vmapped:.2f}x)"
        except RuntimeError as error:  # under bf16 autocast, BatchNorm's batching rule mixes dtypes
            vmap_cell = f"fails: {str(error).splitlines()[0]}"
        fused = timed(grouped(params.model, args.models, images, labels), args.steps, precision)
        print(f"| {batch} | {sequential:.1f} | {vmap_cell} | {fused:.1f} ({sequential / fused:.2f}x) |")


if __name__ == "__main__":
    main()
