"""The pruning environment (AMC, He et al. 2018): an episode walks the prunable layers in forward order, the
state describes the layer about to be pruned, the action is the share of its output channels to keep, and the
reward, given when the last layer is decided, is the score of the whole pruned network.

The budget is a share of the prunable layers' multiply-adds (`ModelParams.macs_kept`), which on these machines
tracks latency (the convolutions dominate both). An "action wall" clips each action to the largest share that
still lets the layers after it meet the budget at their lowest shares, so every episode ends within budget and
the agent never spends its evaluations on candidates that would be thrown away.

Each layer's width lies on a grid: the multiples of `width_multiple` (and the layer's full width), as AMC's code
rounds channels to multiples of 8, since vectorised kernels run whole blocks of channels and a width between two
multiples costs what the next one up does. An action is rounded down to the grid after the wall has clipped it.

It is a `gymnasium.Env` (and passes gymnasium's `check_env`): the observation is the layer's row of FEATURES in
[0, 1], the action a one-element Box of the share to keep; after the last layer the observation is all zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from groundwork.params.training import ModelParams

Score = Callable[[Sequence[float]], float]  # per-layer shares kept -> reward of the pruned network

# The layer embedding, one row per prunable layer; every feature is scaled to [0, 1] over the layers.
# ("side" is the output map's side, standing in for AMC's stride: here resolution falls at pools, not strides.)
# "wall" is the largest share this layer may keep (AMC's state has the budget used and left; the wall says the
# same in the action's own units).
FEATURES = ("index", "is_linear", "in_channels", "out_channels", "kernel", "side", "weights", "macs",
            "macs_reduced", "macs_rest", "previous_action", "wall")


def wall(arch: ModelParams, decided: Sequence[float], lowest: Sequence[float], budget: float) -> float:
    """The largest share the next layer may keep so that, with every later layer at its lowest share, the
    network keeps at most `budget` of its multiply-adds. The cost is linear in that one share (it scales this
    layer's outputs and the next layer's inputs), so two evaluations give the line to solve."""
    rest = list(lowest[len(decided) + 1:])
    at_zero = arch.macs_kept([*decided, 0.0, *rest])
    slope = arch.macs_kept([*decided, 1.0, *rest]) - at_zero
    return min(1.0, (budget - at_zero) / slope)


class PruningEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Per-layer channel pruning of one architecture under a multiply-add budget; see the module docstring."""

    def __init__(self, arch: ModelParams, score: Score, *, budget: float, min_keep: float,
                 width_multiple: int = 1) -> None:
        self.arch = arch
        self.score = score
        self.budget = budget
        self.width_multiple = width_multiple
        self.lowest = arch.lowest_keeps(min_keep, width_multiple)
        self.layers = len(self.lowest)
        self._static = self._layer_table(arch)
        self._total = sum(arch.layer_macs())
        self.keeps: list[float] = []
        self.observation_space = spaces.Box(0.0, 1.0, (len(FEATURES),), np.float32)
        self.action_space = spaces.Box(0.0, 1.0, (1,), np.float32)

    def aligned(self, keeps: Sequence[float]) -> list[float]:
        """`keeps` rounded down to each layer's width grid, as shares (never below a layer's lowest share, which
        is on the grid)."""
        return [max(width / full, low) for width, full, low in
                zip(self.arch.aligned_widths(keeps, self.width_multiple), self.arch.layer_widths(), self.lowest,
                    strict=True)]

    @staticmethod
    def _layer_table(arch: ModelParams) -> np.ndarray:
        rows, inputs = [], arch.layers()[0].fan  # what the first layer reads: 1 grey channel, or every pixel
        for index, (shape, width, cost) in enumerate(zip(arch.layers(), arch.layer_widths(), arch.layer_macs(),
                                                         strict=True)):
            # a conv runs once per position of its output map
            rows.append([index, float(shape.linear), inputs, width, shape.kernel, shape.side, cost / shape.side**2,
                         cost])
            inputs = width
        return np.asarray(rows, dtype=np.float64)

    def _observation(self) -> np.ndarray:
        t = len(self.keeps)
        full = self.arch.layer_macs()
        previous = self.keeps[-1] if self.keeps else 1.0
        kept_so_far = self.arch.macs_kept([*self.keeps, *([1.0] * (self.layers - t))]) * self._total
        reduced = (self._total - kept_so_far) / self._total
        rest = sum(full[t + 1:]) / self._total
        row = np.concatenate([self._static[t], [reduced, rest, previous, self.allowed()[1]]])
        scale = np.concatenate([self._static.max(axis=0), [1.0, 1.0, 1.0, 1.0]])
        return (row / np.where(scale > 0, scale, 1.0)).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode at the first layer (the environment draws nothing at random: `seed` only seeds
        gymnasium's `np_random`, as the API asks)."""
        super().reset(seed=seed)
        self.keeps = []
        return self._observation(), {}

    def allowed(self) -> tuple[float, float]:
        """The range of shares the current layer may keep: its lowest, and the action wall."""
        t = len(self.keeps)
        return self.lowest[t], max(self.lowest[t], wall(self.arch, self.keeps, self.lowest, self.budget))

    def step(self, action: float | np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Keep share `action` of the current layer (clipped to `allowed()`, then rounded down to the layer's width
        grid); the reward comes at the end."""
        low, high = self.allowed()
        clipped = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], low, high))
        t = len(self.keeps)
        self.keeps.append(self.aligned([*self.keeps, clipped, *self.lowest[t + 1:]])[t])
        if len(self.keeps) < self.layers:
            return self._observation(), 0.0, False, False, {"keep": self.keeps[-1]}
        reward = float(self.score(self.keeps))
        return (np.zeros(len(FEATURES), np.float32), reward, True, False,
                {"keep": self.keeps[-1], "keeps": list(self.keeps), "macs_kept": self.arch.macs_kept(self.keeps)})
