"""The pruning environment (AMC, He et al. 2018): an episode walks the prunable layers in forward order, the
state describes the layer about to be pruned, the action is the share of its output channels to keep, and the
reward, given when the last layer is decided, is the score of the whole pruned network.

The budget is in the units of a cost (groundwork.search.cost): a share of the prunable layers' multiply-adds, or
the latency table's estimate of the network's time in ONNX Runtime on this machine. An "action wall" clips each
action to the largest width that still lets some way of finishing the network meet the budget (the cost's
cheapest completion), so every episode ends within budget and the agent never spends its evaluations on
candidates that would be thrown away.

Each layer's width lies on a grid: the multiples of `width_multiple` (and the layer's full width), as AMC's code
rounds channels to multiples of 8, since vectorised kernels run whole blocks of channels and a width between two
multiples costs what the next one up does. An action is rounded down to the grid after the wall has clipped it
(to the narrowest width within budget above it, where latency makes a narrower width cost more).

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
from groundwork.search.cost import ChainCost, macs_cost

Score = Callable[[Sequence[float]], float]  # per-layer shares kept -> reward of the pruned network

# The layer embedding, one row per prunable layer; every feature is scaled to [0, 1] over the layers.
# ("side" is the output map's side, standing in for AMC's stride: here resolution falls at pools, not strides.)
# "wall" is the largest share this layer may keep (AMC's state has the budget used and left; the wall says the
# same in the action's own units).
FEATURES = ("index", "is_linear", "in_channels", "out_channels", "kernel", "side", "weights", "macs",
            "macs_reduced", "macs_rest", "previous_action", "wall")


class PruningEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Per-layer channel pruning of one architecture under a budget of `cost` (by default the share of the
    multiply-adds kept, over the grid `min_keep` and `width_multiple` give); see the module docstring."""

    def __init__(self, arch: ModelParams, score: Score, *, budget: float, min_keep: float = 0.0,
                 width_multiple: int = 1, cost: ChainCost | None = None) -> None:
        self.arch = arch
        self.score = score
        self.budget = budget
        self.cost = cost or macs_cost(arch, arch.width_grid(min_keep, width_multiple))
        self.full = arch.layer_widths()
        self.lowest = tuple(widths[0] / full for widths, full in zip(self.cost.grid, self.full, strict=True))
        self.layers = len(self.lowest)
        self._static = self._layer_table(arch)
        self._total = sum(arch.layer_macs())
        self.keeps: list[float] = []
        self.observation_space = spaces.Box(0.0, 1.0, (len(FEATURES),), np.float32)
        self.action_space = spaces.Box(0.0, 1.0, (1,), np.float32)

    def widths(self, keeps: Sequence[float]) -> tuple[int, ...]:
        """The widths of shares that lie on the grid (as `aligned` and `step` make them), for the first
        len(keeps) layers."""
        return tuple(round(keep * full) for keep, full in zip(keeps, self.full[:len(keeps)], strict=True))

    def network_cost(self, keeps: Sequence[float]) -> float:
        """The cost of the network whose layers keep `keeps` (shares on the grid)."""
        return self.cost.total(self.widths(keeps))

    def cheapest(self) -> list[float]:
        """The shares of the cheapest network of the grid: within every budget the search accepts."""
        return [width / full for width, full in zip(self.cost.cheapest_widths(), self.full, strict=True)]

    def aligned(self, keeps: Sequence[float]) -> list[float]:
        """`keeps` rounded down to each layer's width grid, as shares (never below a layer's narrowest)."""
        return [max([width for width in choices if width <= keep * full + 1e-9] or [choices[0]]) / full
                for keep, full, choices in zip(keeps, self.full, self.cost.grid, strict=True)]

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

    def _fitting(self) -> list[int]:
        """The widths the current layer may take with some way of finishing the network within budget (its
        narrowest when none may: params and the search stage make sure a budget is reachable)."""
        t = len(self.keeps)
        fitting = self.cost.within(self.widths(self.keeps), self.budget)
        return fitting or [self.cost.grid[t][0]]

    def draw(self, rng: np.random.Generator) -> list[float]:
        """A network within budget drawn layer by layer, each width uniformly among those the wall allows (not
        scored: the episode is left where it started)."""
        self.keeps = []
        while len(self.keeps) < self.layers:
            self.keeps.append(int(rng.choice(self._fitting())) / self.full[len(self.keeps)])
        drawn, self.keeps = self.keeps, []
        return drawn

    def allowed(self) -> tuple[float, float]:
        """The range of shares the current layer may keep: its lowest, and the action wall."""
        t = len(self.keeps)
        return self.lowest[t], max(self._fitting()) / self.full[t]

    def step(self, action: float | np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Keep share `action` of the current layer (clipped to `allowed()`, then rounded down to the layer's width
        grid, among the widths within budget); the reward comes at the end."""
        t = len(self.keeps)
        fitting = self._fitting()
        wanted = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, 1.0)) * self.full[t]
        width = max([w for w in fitting if w <= wanted + 1e-9] or [min(fitting)])
        self.keeps.append(width / self.full[t])
        if len(self.keeps) < self.layers:
            return self._observation(), 0.0, False, False, {"keep": self.keeps[-1]}
        reward = float(self.score(self.keeps))
        return (np.zeros(len(FEATURES), np.float32), reward, True, False,
                {"keep": self.keeps[-1], "keeps": list(self.keeps), "macs_kept": self.arch.macs_kept(self.keeps),
                 "cost": self.network_cost(self.keeps)})
