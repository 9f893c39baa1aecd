"""The model shared by every stage: a backbone of the architecture params name (groundwork.models.backbones) that
yields an embedding, and a linear head."""

from __future__ import annotations

import torch
from torch import nn

from groundwork.data.datasets import NUM_CLASSES
from groundwork.models.backbones import BACKBONES, Prunable
from groundwork.params.training import ModelParams


class DigitNet(nn.Module):
    """Backbone plus head; `head` is what transfer replaces."""

    def __init__(self, arch: ModelParams, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.backbone = BACKBONES[arch.arch](arch)
        self.head = new_head(arch, num_classes)
        self.backbone_frozen = False
        # layers replaced by a low-rank pair (module name -> rank): part of the architecture, saved with it
        self.factorized: dict[str, int] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def prunable(self) -> list[Prunable]:
        """The backbone's prunable layers with their BatchNorms, in `ModelParams.layer_widths` order; the head,
        which reads the last of them, is never narrowed (one output per class)."""
        return self.backbone.prunable()

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
    return nn.Sequential(nn.Dropout(arch.dropout), nn.Linear(arch.embedding_width, num_classes))


def prunable_layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, 'weight') for every conv and linear layer: the weights that pruning considers."""
    return [(module, "weight") for module in model.modules() if isinstance(module, nn.Conv2d | nn.Linear)]
