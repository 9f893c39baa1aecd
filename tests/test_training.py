"""The shared training loop: optimizers, schedules, learning, determinism and divergence."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from groundwork.errors import TrainingDiverged
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params
from groundwork.params.data import AugmentParams
from groundwork.params.training import TrainParams
from groundwork.project import tiny_params_dict
from groundwork.training.distributed import resolve_device
from groundwork.training.loop import (
    LOSSES,
    LRPolicy,
    build_optimizer,
    epoch_line_level,
    epochs_logged_at,
    fit,
    loss_and_accuracy,
    mse_one_hot,
    seed_everything,
    supervised,
    validation,
)
from groundwork.training.precision import autocast, autocast_dtype, bf16_native, precision_used
from groundwork.training.transforms import augment_batch, online_augmentation


def train_params(**changes: object) -> TrainParams:
    return TrainParams.model_validate({**tiny_params_dict()["compress"]["finetune"], "augmentation": "none", **changes})


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


def lr_trace(cfg: TrainParams, val_losses: list[float] | None = None, steps: int = 10) -> list[float]:
    """The LR after every step of a run of cfg.epochs epochs of `steps` steps, under the LR policy."""
    optimizer = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))]}], cfg)
    policy = LRPolicy(optimizer, cfg, steps_per_epoch=steps)
    trace = []
    for epoch in range(cfg.epochs):
        for _ in range(steps):
            optimizer.step()
            policy.after_step()
            trace.append(optimizer.param_groups[0]["lr"])
        policy.after_epoch(val_losses[epoch] if val_losses else 1.0)
    return trace


@pytest.mark.parametrize("schedule", ["none", "cosine", "step", "onecycle", "plateau"])
def test_schedules_change_the_lr_as_named(schedule: str) -> None:
    cfg = train_params(schedule=schedule, epochs=4, step_size=1, gamma=0.5, lr=0.1, plateau_patience=0,
                       warmup_epochs=0)
    lrs = lr_trace(cfg, val_losses=[1.0, 1.0, 1.0, 1.0])
    if schedule == "none":
        assert set(lrs) == {0.1}
    elif schedule == "step":
        assert lrs[8] == pytest.approx(0.1) and lrs[9] == pytest.approx(0.05) and lrs[19] == pytest.approx(0.025)
    elif schedule == "plateau":  # epoch 1 sets the best loss; every later epoch without gain cuts the LR
        assert lrs[19] == 0.1 and lrs[20] == pytest.approx(0.05) and lrs[30] == pytest.approx(0.025)
    else:
        assert max(lrs) <= 0.1 + 1e-9 and lrs[-1] < 0.01


def test_warmup_rises_linearly_then_hands_over() -> None:
    lrs = lr_trace(train_params(schedule="cosine", epochs=4, warmup_epochs=1, lr=0.1))
    assert lrs[0] < 0.02 and all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert lrs[9] == pytest.approx(0.1, rel=0.02)
    assert lrs[-1] < 0.01


def test_plateau_waits_for_warmup_and_patience() -> None:
    cfg = train_params(schedule="plateau", epochs=5, warmup_epochs=1, plateau_patience=1, gamma=0.1, lr=0.1)
    lrs = lr_trace(cfg, val_losses=[1.0, 0.9, 0.95, 0.97, 0.99])
    assert lrs[19] == pytest.approx(0.1) and lrs[39] == pytest.approx(0.1)  # one stale epoch is tolerated
    assert lrs[40] == pytest.approx(0.01)  # the second stale epoch (4) cuts the LR for epoch 5


def test_early_stopping_and_restore_best() -> None:
    params = Params.model_validate(tiny_params_dict())
    seed_everything(0)
    model = DigitNet(params.model)
    scores = iter([0.5, 0.4, 0.6, 0.7, 0.8, 0.9])
    snapshots: list[torch.Tensor] = []

    def validate(net: torch.nn.Module) -> dict[str, float]:
        snapshots.append(net.head[1].weight.detach().clone())
        return {"val_loss": next(scores), "val_accuracy": 0.0}

    history = fit(model, toy_data(), train_params(epochs=6, early_stopping=2, restore_best=True),
                  device=torch.device("cpu"), seed=0, validate=validate)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # two epochs without gain after epoch 2
    torch.testing.assert_close(model.head[1].weight.detach(), snapshots[1])  # epoch 2 had the lowest loss


def test_fit_learns_and_reports_every_epoch() -> None:
    params = Params.model_validate(tiny_params_dict())
    seed_everything(0)
    model = DigitNet(params.model)
    data = toy_data()
    seen: list[int] = []
    history = fit(model, data, train_params(epochs=3, batch_size=16, lr=3e-3), device=torch.device("cpu"), seed=0,
                  validate=validation(*data, device=torch.device("cpu")), on_epoch=lambda epoch, _: seen.append(epoch))
    assert seen == [1, 2, 3] and [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert loss_and_accuracy(model, *data, device=torch.device("cpu"))["accuracy"] > 0.5


def test_same_seed_gives_identical_metrics() -> None:
    params = Params.model_validate(tiny_params_dict())
    augment = AugmentParams.model_validate(tiny_params_dict()["augment"])
    runs = []
    for _ in range(2):
        seed_everything(7)
        model = DigitNet(params.model)
        runs.append(fit(model, toy_data(), train_params(epochs=2, augmentation="online"), device=torch.device("cpu"),
                        seed=7, objective=supervised(online_augmentation(augment)),
                        validate=validation(*toy_data(), device=torch.device("cpu"))))
    assert runs[0] == runs[1]


def test_divergence_stops_with_a_clear_error() -> None:
    params = Params.model_validate(tiny_params_dict())
    model = DigitNet(params.model)
    with pytest.raises(TrainingDiverged, match=r"loss became .* lower the learning rate \(lr=10.0\)"):
        fit(model, toy_data(), train_params(optimizer="momentum", lr=10.0, epochs=5, batch_size=16,
                                                  weight_decay=0.0, schedule="none"),
            device=torch.device("cpu"), seed=0)


def test_a_fine_tune_that_starts_near_zero_loss_is_not_taken_for_a_blow_up() -> None:
    """A trained model's first batch may cost 0.01 and a hard batch 2.3 (200 times more): that is learning, not
    divergence; only a loss far above an untrained model's stops the run."""
    params = Params.model_validate(tiny_params_dict())
    scales = itertools.chain([0.005], itertools.repeat(1.0))

    def objective(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, int]:
        outputs = model(inputs)
        return torch.nn.functional.cross_entropy(outputs, targets) * next(scales), 0

    history = fit(DigitNet(params.model), toy_data(), train_params(epochs=1, batch_size=16), device=torch.device("cpu"),
                  seed=0, objective=objective)
    assert len(history) == 1


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


def test_precision_auto_takes_bf16_only_where_it_is_native() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if bf16_native(cpu) else None)
    # what a training stage records: the arithmetic it got, not the param's word
    assert (precision_used("fp32", cpu), precision_used("bf16", cpu)) == ("fp32", "bf16")
    assert precision_used("auto", cpu) == ("bf16" if bf16_native(cpu) else "fp32")


def test_bf16_training_steps_autocast_the_model_and_learn_as_fp32_does() -> None:
    """Under precision bf16 the model's forward pass runs in bf16 and its weights stay fp32; it learns the toy
    digits as the fp32 run does, and validation is computed in fp32 either way."""
    params = Params.model_validate(tiny_params_dict())
    data, cpu = toy_data(), torch.device("cpu")
    accuracy, output_dtypes = {}, set()
    for dtype in (None, torch.bfloat16):
        seed_everything(0)
        model = DigitNet(params.model)

        def objective(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                      generator: torch.Generator) -> tuple[torch.Tensor, int]:
            outputs = model(inputs)
            output_dtypes.add(outputs.dtype)
            return torch.nn.functional.cross_entropy(outputs, targets), int((outputs.argmax(1) == targets).sum())

        history = fit(model, data, train_params(epochs=3, batch_size=16, lr=3e-3), device=cpu, seed=0,
                      objective=objective, validate=validation(*data, device=cpu), precision=dtype)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        accuracy[dtype] = history[-1]["val_accuracy"]
    assert output_dtypes == {torch.float32, torch.bfloat16}
    assert accuracy[None] > 0.5 and accuracy[torch.bfloat16] > 0.5


def test_augmentation_is_fp32_and_identical_inside_a_bf16_step() -> None:
    augment = AugmentParams.model_validate(tiny_params_dict()["augment"])
    images = torch.rand(16, 1, 28, 28)
    plain = augment_batch(images, augment, torch.Generator().manual_seed(3))
    with autocast(torch.device("cpu"), torch.bfloat16):
        inside = augment_batch(images, augment, torch.Generator().manual_seed(3))
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


def test_fixmatch_teaches_confident_pseudo_labels_to_strong_views() -> None:
    """Unlabelled images whose plain view the model is sure of pull the strong view towards that label; below the
    confidence threshold they add nothing, and the unlabelled images come from the pool alone."""
    from groundwork.training.semi_supervised import fixmatch

    class Fixed(torch.nn.Module):
        """Logits from the first pixel alone: confident on bright images, unsure on dark ones."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(1.0))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            first = images[:, 0, 0, 0]
            return torch.stack([first * 20 * self.scale, torch.zeros_like(first)], dim=1)

    def loss_with(pool_value: int, confidence: float) -> float:
        pool = torch.full((8, 28, 28), pool_value, dtype=torch.uint8)
        objective = fixmatch(pool, ratio=2, confidence=confidence, weight=1.0,
                             strong=lambda images, generator: images * 0.5)
        inputs, targets = torch.ones(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)
        loss, correct = objective(Fixed(), inputs, targets, torch.Generator().manual_seed(0))
        assert correct == 2
        return loss.item()

    supervised_only = loss_with(0, confidence=0.95)  # dark pool: 50/50 logits, never confident
    # pixel 40/255: the plain view's logit is 3.1, 96% sure of class 0
    assert loss_with(40, confidence=0.99) == pytest.approx(supervised_only)  # not sure enough: nothing added
    assert loss_with(40, confidence=0.95) > supervised_only + 0.1  # the strong (halved) view is less sure: a loss


def test_mse_loss_is_the_squared_error_of_the_softmax_against_the_one_hot_label() -> None:
    logits, labels = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]), torch.tensor([0, 2])
    expected = torch.nn.functional.mse_loss(logits.softmax(1), torch.nn.functional.one_hot(labels, 3).float())
    torch.testing.assert_close(mse_one_hot(logits, labels), expected)
    torch.testing.assert_close(mse_one_hot(logits, labels, reduction="none").mean(), expected)
    assert set(LOSSES) == set(TrainParams.model_fields["loss"].annotation.__args__)


def test_fit_trains_on_the_loss_params_name() -> None:
    """loss: mse trains with the mean squared error (its train_loss is that loss, far below cross-entropy's on
    the same run) and learns the toy digits as cross-entropy does."""
    params = Params.model_validate(tiny_params_dict())
    data, cpu = toy_data(), torch.device("cpu")
    runs = {}
    for loss in ("cross_entropy", "mse"):
        seed_everything(0)
        model = DigitNet(params.model)
        history = fit(model, data, train_params(epochs=3, batch_size=16, lr=3e-3, loss=loss), device=cpu, seed=0,
                      validate=validation(*data, device=cpu))
        runs[loss] = history[-1]
    assert runs["mse"]["train_loss"] < 0.1 < runs["cross_entropy"]["train_loss"], runs  # at most 1/classes * 2
    assert runs["cross_entropy"]["val_accuracy"] > 0.5 and runs["mse"]["val_accuracy"] > 0.5, runs


def test_a_long_fit_logs_about_ten_epoch_lines_at_info_and_the_rest_at_debug() -> None:
    levels = [epoch_line_level(epoch, 60) for epoch in range(1, 61)]
    assert [epoch for epoch, level in enumerate(levels, 1) if level == logging.INFO] == [1, 6, 12, 18, 24, 30, 36,
                                                                                         42, 48, 54, 60]
    assert all(level == logging.INFO for level in map(epoch_line_level, range(1, 11), [10] * 10)), "short: every one"
    with epochs_logged_at(logging.DEBUG):
        assert epoch_line_level(1, 60) == epoch_line_level(60, 60) == logging.DEBUG
