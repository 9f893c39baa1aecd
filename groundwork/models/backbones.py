"""The backbones a DigitNet may have, one per `model.arch`, each mapping 0..1 images to an embedding, and each
describing its own prunable layers so that structured pruning, the multiply-add count and the policy search need
no knowledge of where a layer sits.

  cnn     blocks of two 3x3 convs with BatchNorm and a 2x2 pool, then a dense embedding with BatchNorm
  mlp     dense layers of the hidden sizes with ReLU, no BatchNorm (the survey's 784-256-128-10, LeNet-300-100)
  lenet5  5x5 convs without padding, each with ReLU and a 2x2 pool, then a dense embedding with ReLU, no
          BatchNorm (Deep Compression's LeNet-5: 20 and 50 filters, 500 units; ReLU after the convs as well)

Normalisation lives inside the model, so exported files take plain 0..1 images.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from groundwork.data.canvas import IMAGE_SIDE
from groundwork.models.geometry import LENET_KERNEL
from groundwork.params.training import ModelParams

# A prunable layer and the BatchNorm that follows it (None where the architecture has none). A layer's outputs
# feed the next prunable layer (or the head) directly, or through a flatten: then each output channel owns
# `LayerShape.fan` consecutive inputs of the next layer, channel by channel.
Prunable = tuple[nn.Conv2d | nn.Linear, nn.BatchNorm1d | nn.BatchNorm2d | None]


class _Normalised(nn.Module):
    """A backbone that normalises its input with the architecture's pixel statistics."""

    def __init__(self, arch: ModelParams) -> None:
        super().__init__()
        self.pixel_mean, self.pixel_std = arch.pixel_mean, arch.pixel_std

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.pixel_mean) / self.pixel_std

    def prunable(self) -> list[Prunable]:
        """Every prunable layer with its BatchNorm, in `ModelParams.layer_widths` order."""
        raise NotImplementedError


def _conv_block(in_channels: int, inner_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, inner_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(inner_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(inner_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Backbone(_Normalised):
    """The CNN: conv blocks (two 3x3 convs with BatchNorm, then a 2x2 pool each) and a dense embedding layer. A
    block's first conv is as wide as the block unless the architecture says otherwise (a pruned model's may
    differ)."""

    def __init__(self, arch: ModelParams) -> None:
        super().__init__(arch)
        channels, embedding_dim = arch.channels, arch.embedding_dim
        inner = arch.inner_channels or channels
        self.features = nn.Sequential(*(_conv_block(a, mid, b)
                                        for (a, b), mid in zip(pairwise((1, *channels)), inner, strict=True)))
        side = IMAGE_SIDE // 2 ** len(channels)
        self.embed = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels[-1] * side * side, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(self.normalise(images)))

    def prunable(self) -> list[Prunable]:
        # a block is (conv, bn, relu, conv, bn, relu, pool); the embedding (flatten, linear, bn, relu)
        return [*((block[conv], block[conv + 1]) for block in self.features for conv in (0, 3)),
                (self.embed[1], self.embed[2])]


class MLPBackbone(_Normalised):
    """Dense layers of the hidden sizes, each with ReLU; the last hidden layer is the embedding."""

    def __init__(self, arch: ModelParams) -> None:
        super().__init__(arch)
        layers: list[nn.Module] = [nn.Flatten()]
        for inputs, outputs in pairwise((IMAGE_SIDE * IMAGE_SIDE, *arch.hidden)):
            layers += [nn.Linear(inputs, outputs), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.normalise(images))

    def prunable(self) -> list[Prunable]:
        return [(layer, None) for layer in self.layers if isinstance(layer, nn.Linear)]


class LeNetBackbone(_Normalised):
    """LeNet-5 as Deep Compression trained it: 5x5 convs without padding, each followed by ReLU and a 2x2 pool,
    then a dense embedding with ReLU; no BatchNorm."""

    def __init__(self, arch: ModelParams) -> None:
        super().__init__(arch)
        layers: list[nn.Module] = []
        for inputs, outputs in pairwise((1, *arch.channels)):
            layers += [nn.Conv2d(inputs, outputs, LENET_KERNEL), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(arch.channels[-1] * arch.layers()[-1].fan,
                                                           arch.embedding_dim), nn.ReLU(inplace=True))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(self.normalise(images)))

    def prunable(self) -> list[Prunable]:
        return [*((layer, None) for layer in self.features if isinstance(layer, nn.Conv2d)), (self.embed[1], None)]


BACKBONES: dict[str, type[_Normalised]] = {"cnn": Backbone, "mlp": MLPBackbone, "lenet5": LeNetBackbone}
