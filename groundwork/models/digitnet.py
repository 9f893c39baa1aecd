"""The CNN shared by every stage: a convolutional backbone that yields an embedding, and a linear head."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from groundwork.data.datasets import IMAGE_SIDE, NUM_CLASSES
from groundwork.params import ModelParams

# MNIST's pixel statistics: normalisation lives inside the model so exported files take plain 0..1 images.
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081


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


class Backbone(nn.Module):
    """Conv blocks (two 3x3 convs with BatchNorm, then a 2x2 pool each) and a dense embedding layer. A block's
    first conv is as wide as the block unless the architecture says otherwise (a pruned model's may differ)."""

    def __init__(self, arch: ModelParams) -> None:
        super().__init__()
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
        return self.embed(self.features((images - PIXEL_MEAN) / PIXEL_STD))


class DigitNet(nn.Module):
    """Backbone plus head; `head` is what transfer replaces."""

    def __init__(self, arch: ModelParams, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.backbone = Backbone(arch)
        self.head = new_head(arch, num_classes)
        self.backbone_frozen = False
        # layers replaced by a low-rank pair (module name -> rank): part of the architecture, saved with it
        self.factorized: dict[str, int] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def freeze_backbone(self, frozen: bool = True) -> DigitNet:
        """Stop (or resume) training the backbone: no gradients, and BatchNorm statistics kept as they are."""
        self.backbone_frozen = frozen
        self.backbone.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> DigitNet:
        """As nn.Module.train, but a frozen backbone stays in eval mode (its BatchNorm must not drift)."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self


def new_head(arch: ModelParams, num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """A freshly initialised classification head for the backbone's embedding."""
    return nn.Sequential(nn.Dropout(arch.dropout), nn.Linear(arch.embedding_dim, num_classes))


def prunable_layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, 'weight') for every conv and linear layer: the weights that pruning considers."""
    return [(module, "weight") for module in model.modules() if isinstance(module, nn.Conv2d | nn.Linear)]
