"""The shared training loop: optimizers, schedules, learning, determinism and divergence."""

from __future__ import annotations

import pytest
import torch

from tasks.model import DigitNet
from tasks.params import Params, TrainParams
from tasks.training import (
    TrainingDiverged,
    build_optimizer,
    build_scheduler,
    evaluate,
    fit,
    resolve_device,
    seed_everything,
)
from tests.conftest import tiny_params_dict


def train_params(**changes: object) -> TrainParams:
    return TrainParams.model_validate({**tiny_params_dict()["pretrain"], **changes})


def toy_data(count: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten separable 'digits': class k is a bright square at a class-specific place."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(count) % 10
    images = torch.randint(0, 40, (count, 28, 28), dtype=torch.uint8, generator=generator)
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 5)
        images[i, 4 + row * 10:10 + row * 10, 2 + col * 5:6 + col * 5] = 255
    return images, labels


@pytest.mark.parametrize(("name", "kind"), [("sgd", torch.optim.SGD), ("momentum", torch.optim.SGD),
                                            ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimizer_from_params(name: str, kind: type) -> None:
    cfg = train_params(optimizer=name, nesterov=name == "momentum")
    optimizer = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))]}], cfg)
    assert type(optimizer) is kind
    if name == "momentum":
        assert optimizer.param_groups[0]["momentum"] == cfg.momentum and optimizer.param_groups[0]["nesterov"]


@pytest.mark.parametrize("schedule", ["none", "cosine", "step", "onecycle"])
def test_schedules_change_the_lr_as_named(schedule: str) -> None:
    cfg = train_params(schedule=schedule, epochs=4, step_size=1, gamma=0.5, lr=0.1)
    optimizer = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))]}], cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    if schedule == "none":
        assert set(lrs) == {0.1}
    elif schedule == "step":
        assert lrs[9] == pytest.approx(0.05) and lrs[19] == pytest.approx(0.025)
    else:
        assert max(lrs) <= 0.1 + 1e-9 and lrs[-1] < 0.01


def test_fit_learns_and_reports_every_epoch() -> None:
    params = Params.model_validate(tiny_params_dict())
    seed_everything(0)
    model = DigitNet(params.model)
    data = toy_data()
    seen: list[int] = []
    history = fit(model, data, data, train_params(epochs=3, batch_size=16, lr=3e-3), device=torch.device("cpu"), seed=0,
                  on_epoch=lambda epoch, _: seen.append(epoch))
    assert seen == [1, 2, 3] and [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert evaluate(model, *data, device=torch.device("cpu"))["accuracy"] > 0.5


def test_same_seed_gives_identical_metrics() -> None:
    params = Params.model_validate(tiny_params_dict())
    runs = []
    for _ in range(2):
        seed_everything(7)
        model = DigitNet(params.model)
        runs.append(fit(model, toy_data(), toy_data(), train_params(epochs=2), device=torch.device("cpu"), seed=7))
    assert runs[0] == runs[1]


def test_divergence_stops_with_a_clear_error() -> None:
    params = Params.model_validate(tiny_params_dict())
    model = DigitNet(params.model)
    with pytest.raises(TrainingDiverged, match=r"loss became .* lower the learning rate \(lr=10.0\)"):
        fit(model, toy_data(), None, train_params(optimizer="momentum", lr=10.0, epochs=5, batch_size=16,
                                                  weight_decay=0.0, schedule="none"),
            device=torch.device("cpu"), seed=0)


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")
