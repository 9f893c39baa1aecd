"""Label-free pretraining, SimCLR style: two augmented views of each image, pulled together by NT-Xent."""

from __future__ import annotations

import torch
from torch import nn

from groundwork.params.data import AugmentParams
from groundwork.training.loop import Objective, Validate, prepare_batch
from groundwork.training.transforms import augment_batch


class Projector(nn.Module):
    """Backbone plus the MLP projection head on which the contrastive loss is computed (then discarded)."""

    def __init__(self, backbone: nn.Module, embedding_dim: int, projection_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.project = nn.Sequential(nn.Linear(embedding_dim, embedding_dim), nn.ReLU(inplace=True),
                                     nn.Linear(embedding_dim, projection_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.backbone(images))


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> tuple[torch.Tensor, int]:
    """Normalised-temperature cross-entropy over 2N views; also how many views pick their partner first."""
    views = nn.functional.normalize(torch.cat([first, second]), dim=1)
    similarity = views @ views.T / temperature
    similarity.fill_diagonal_(float("-inf"))  # a view is never its own positive
    count = len(first)
    partner = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(views.device)
    loss = nn.functional.cross_entropy(similarity, partner)
    return loss, int((similarity.argmax(1) == partner).sum()) // 2


def contrastive_objective(augment: AugmentParams, temperature: float) -> Objective:
    """The loop's objective: labels are ignored; accuracy is how often a view finds its partner."""
    def objective(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, int]:
        del targets  # label-free by construction
        return nt_xent(model(augment_batch(inputs, augment, generator)),
                       model(augment_batch(inputs, augment, generator)), temperature)
    return objective


def contrastive_validation(images: torch.Tensor, augment: AugmentParams, temperature: float, *,
                           device: torch.device, seed: int, batch: int = 256) -> Validate:
    """NT-Xent on held-out images with fixed views (same draws every epoch), so epochs are comparable."""
    @torch.no_grad()
    def validate(model: nn.Module) -> dict[str, float]:
        model.eval()
        generator = torch.Generator().manual_seed(seed)
        losses, found = [], 0
        for start in range(0, len(images), batch):
            inputs = prepare_batch(images[start:start + batch], device)
            loss, correct = nt_xent(model(augment_batch(inputs, augment, generator)),
                                    model(augment_batch(inputs, augment, generator)), temperature)
            losses.append(loss.item() * len(inputs))
            found += correct
        return {"val_loss": sum(losses) / len(images), "val_accuracy": found / len(images)}
    return validate
