"""The pruning environment (AMC, He et al. 2018): an episode walks the prunable layers in forward order, the
state describes the layer about to be pruned, the action is the share of its output channels to keep, and the
reward, given when the last layer is decided, is the score of the whole pruned network.

Where the cost's grid lets a layer ship in int8 or fp32 (`search.precision: mixed`), the layer takes a second
step, as HAQ (Wang et al. 2019) makes precision an action: the same state with `precision_step` set, and an
action of 0.5 or more for int8, below for fp32 (fp32 layers are left out of quantization, ONNX Runtime's
`nodes_to_exclude`). A layer with one precision has no such step.

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
[0, 1], the action a one-element Box (the share to keep, or the precision); after the last layer the observation
is all zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from groundwork.params.training import ModelParams
from groundwork.search.cost import ChainCost, Option, macs_cost

# (per-layer shares kept, each cell's precision: the prunable layers, then the head) -> reward of that network
Score = Callable[[Sequence[float], Sequence[str]], float]
INT8_AT = 0.5  # a precision step's action at or above this is int8, below it fp32

# The layer embedding, one row per prunable layer; every feature is scaled to [0, 1] over the layers.
# ("side" is the output map's side, standing in for AMC's stride: here resolution falls at pools, not strides.)
# "wall" is the largest share this layer may keep (AMC's state has the budget used and left; the wall says the
# same in the action's own units). "precision_step" is 1 on a layer's precision step, 0 on its width step.
FEATURES = ("index", "is_linear", "in_channels", "out_channels", "kernel", "side", "weights", "macs",
            "macs_reduced", "macs_rest", "previous_action", "wall", "precision_step")


class PruningEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Per-layer channel pruning (and, where the cost allows both, precision) of one architecture under a budget
    of `cost` (by default the share of the multiply-adds kept, over the grid `min_keep` and `width_multiple`
    give, every layer int8); see the module docstring."""

    def __init__(self, arch: ModelParams, score: Score, *, budget: float, min_keep: float = 0.0,
                 width_multiple: int = 1, cost: ChainCost | None = None) -> None:
        self.arch = arch
        self.score = score
        self.budget = budget
        self.cost = cost or macs_cost(arch, arch.width_grid(min_keep, width_multiple))
        self.full = arch.layer_widths()
        self.lowest = tuple(widths[0] / full for widths, full in zip(self.cost.widths, self.full, strict=True))
        self.layers = len(self.lowest)
        choices = self.cost.precisions
        # what a layer ships in when nothing chooses otherwise (the baselines): int8 where it may be
        self.default_precisions = ["int8" if "int8" in layer else layer[0] for layer in choices]
        self.has_precision_step = [len(layer) > 1 for layer in choices[:-1]]
        self._static = self._layer_table(arch)
        self._total = sum(arch.layer_macs())
        self.keeps: list[float] = []
        self.precisions: list[str] = []
        self._width: int | None = None  # a layer's width once chosen, while its precision step is pending
        self.observation_space = spaces.Box(0.0, 1.0, (len(FEATURES),), np.float32)
        self.action_space = spaces.Box(0.0, 1.0, (1,), np.float32)

    def widths(self, keeps: Sequence[float]) -> tuple[int, ...]:
        """The widths of shares that lie on the grid (as `aligned` and `step` make them), for the first
        len(keeps) layers."""
        return tuple(round(keep * full) for keep, full in zip(keeps, self.full[:len(keeps)], strict=True))

    def cells(self, precisions: Sequence[str] | None = None) -> list[str]:
        """Every cell's precision (the prunable layers', then the head's) of a network whose layers take
        `precisions` (default: `default_precisions`)."""
        layers = list(precisions) if precisions is not None else self.default_precisions[:-1]
        return [*layers[:self.layers], self.default_precisions[-1]]

    def options(self, keeps: Sequence[float], precisions: Sequence[str]) -> list[Option]:
        """The cost's options of the first len(keeps) layers."""
        return list(zip(self.widths(keeps), precisions, strict=False))

    def network_cost(self, keeps: Sequence[float], precisions: Sequence[str] | None = None) -> float:
        """The cost of the network whose layers keep `keeps` (shares on the grid) in `precisions` (default:
        `default_precisions`)."""
        return self.cost.total(self.options(keeps, self.cells(precisions)))

    def cheapest(self) -> tuple[list[float], list[str]]:
        """The shares and cell precisions of the cheapest network of the grid: within every budget the search
        accepts."""
        options = self.cost.cheapest_options()
        return ([width / full for (width, _), full in zip(options, self.full, strict=True)],
                self.cells([precision for _, precision in options]))

    def aligned(self, keeps: Sequence[float]) -> list[float]:
        """`keeps` rounded down to each layer's width grid, as shares (never below a layer's narrowest)."""
        return [max([width for width in choices if width <= keep * full + 1e-9] or [choices[0]]) / full
                for keep, full, choices in zip(keeps, self.full, self.cost.widths, strict=True)]

    def actions(self, keeps: Sequence[float], precisions: Sequence[str]) -> list[float]:
        """The actions, step by step, that make the network `keeps` in `precisions` (each cell's)."""
        steps: list[float] = []
        for layer, keep in enumerate(keeps):
            steps.append(keep)
            if self.has_precision_step[layer]:
                steps.append(1.0 if precisions[layer] == "int8" else 0.0)
        return steps

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
        pending = self._width is not None
        previous = (self._width / self.full[t] if pending else self.keeps[-1] if self.keeps else 1.0)
        kept_so_far = self.arch.macs_kept([*self.keeps, *([1.0] * (self.layers - t))]) * self._total
        reduced = (self._total - kept_so_far) / self._total
        rest = sum(full[t + 1:]) / self._total
        row = np.concatenate([self._static[t], [reduced, rest, previous, self.allowed()[1], float(pending)]])
        scale = np.concatenate([self._static.max(axis=0), [1.0, 1.0, 1.0, 1.0, 1.0]])
        return (row / np.where(scale > 0, scale, 1.0)).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode at the first layer (the environment draws nothing at random: `seed` only seeds
        gymnasium's `np_random`, as the API asks)."""
        super().reset(seed=seed)
        self.keeps, self.precisions, self._width = [], [], None
        return self._observation(), {}

    def _fitting(self) -> list[Option]:
        """The options the current layer may take with some way of finishing the network within budget (its
        cheapest narrowest when none may: params and the search stage make sure a budget is reachable); on a
        precision step, those at the width chosen."""
        t = len(self.keeps)
        fitting = self.cost.within(self.options(self.keeps, self.precisions), self.budget)
        if self._width is not None:
            fitting = [option for option in fitting if option[0] == self._width]
        return fitting or [min(option for option in self.cost.grid[t]
                               if self._width is None or option[0] == self._width)]

    def draw(self, rng: np.random.Generator) -> tuple[list[float], list[str]]:
        """A network within budget drawn layer by layer, each width uniformly among those the wall allows, then
        each precision among those still within budget (not scored: the episode is left where it started)."""
        self.reset()
        while len(self.keeps) < self.layers:
            self._width = int(rng.choice(sorted({width for width, _ in self._fitting()})))
            precisions = sorted({precision for _, precision in self._fitting()})
            precision = precisions[int(rng.integers(len(precisions)))] if len(precisions) > 1 else precisions[0]
            self.keeps.append(self._width / self.full[len(self.keeps)])
            self.precisions.append(precision)
            self._width = None
        drawn = (self.keeps, self.cells(self.precisions))
        self.reset()
        return drawn

    def allowed(self) -> tuple[float, float]:
        """The range of actions the current step may take: on a width step the layer's lowest share to the action
        wall; on a precision step [0, 1] when both precisions fit the budget, else the half of the one that does."""
        t = len(self.keeps)
        fitting = self._fitting()
        if self._width is not None:
            precisions = {precision for _, precision in fitting}
            if precisions == {"int8", "fp32"}:
                return 0.0, 1.0
            return (INT8_AT, 1.0) if precisions == {"int8"} else (0.0, INT8_AT - 0.01)
        return self.lowest[t], max(width for width, _ in fitting) / self.full[t]

    def step(self, action: float | np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """On a width step, keep share `action` of the current layer (clipped to `allowed()`, then rounded down to
        the layer's width grid, among the widths within budget); on a precision step, int8 for an action of
        INT8_AT or more (when it fits the budget), else fp32. The reward comes at the end."""
        t = len(self.keeps)
        fitting = self._fitting()
        value = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, 1.0))
        if self._width is None:
            widths = sorted({width for width, _ in fitting})
            width = max([w for w in widths if w <= value * self.full[t] + 1e-9] or [widths[0]])
            if self.has_precision_step[t]:
                self._width = width
                return self._observation(), 0.0, False, False, {"keep": width / self.full[t],
                                                                 "taken": width / self.full[t]}
            precision = min(precision for w, precision in fitting if w == width)
            taken = width / self.full[t]  # the action the environment took, in the action's units
        else:
            width, self._width = self._width, None
            wanted = "int8" if value >= INT8_AT else "fp32"
            precisions = {precision for _, precision in fitting}
            precision = wanted if wanted in precisions else min(precisions)
            taken = float(precision == "int8")  # 1 for int8, 0 for fp32
        self.keeps.append(width / self.full[t])
        self.precisions.append(precision)
        step = {"keep": self.keeps[-1], "precision": precision, "taken": taken}
        if len(self.keeps) < self.layers:
            return self._observation(), 0.0, False, False, step
        cells = self.cells(self.precisions)
        reward = float(self.score(self.keeps, cells))
        return (np.zeros(len(FEATURES), np.float32), reward, True, False,
                {**step, "keeps": list(self.keeps), "precisions": cells,
                 "macs_kept": self.arch.macs_kept(self.keeps), "cost": self.network_cost(self.keeps, cells)})
