"""What a candidate network costs, for the search's budget: a sum of one term per cell (each prunable layer, then
the head), each term depending only on the options on either side of its cell (an option is a layer's width and
precision), so the cheapest way to finish a network from any layer on is a small dynamic programme over the grid of
options.

Three costs have that shape. Multiply-adds, and the bytes of weights a network ships (one per weight in int8, four
in fp32): a layer's scale with its own outputs and with the inputs the layer before it kept. The latency table's
estimate (groundwork.search.latency): each cell's time depends on its input and output widths, and an int8 -> int8
edge on the width between them. Latency is not monotone in the widths (in int8, 8 channels cost more than 16 here:
quantizing them costs more than computing them), which is why the search asks the programme for the cheapest
completion instead of assuming every later layer at its narrowest.

Each layer's precisions are its `precision_choices`: one (int8, or fp32 at the ends compress keeps in fp32) unless
the search picks precisions too (`search.precision: mixed`), where a layer may be int8 or fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property

from groundwork.data.datasets import NUM_CLASSES
from groundwork.models.geometry import LayerShape
from groundwork.params.compression import QuantizationParams
from groundwork.params.training import ModelParams
from groundwork.search.latency import LatencyTable, shipped_precisions

Option = tuple[int, str]  # a layer's width and precision ("int8" or "fp32")
Term = Callable[[int, Option, Option], float]  # (cell, the option before it, its own) -> that cell's share of the cost
INPUT: Option = (1, "input")  # what the first cell reads: one grey channel


def precision_choices(cells: int, quantization: QuantizationParams, mixed: bool) -> list[tuple[str, ...]]:
    """The precisions each cell (the prunable layers, then the head) may ship in: int8; the first and the head
    fp32 when `quantization.keep_ends_fp32`; every prunable layer not held at fp32 int8 or fp32 when `mixed`."""
    choices = [("fp32",) if precision == "fp32" else ("int8",)
               for precision in shipped_precisions(cells, quantization)]
    return [("int8", "fp32") if mixed and cell < cells - 1 and choice == ("int8",) else choice
            for cell, choice in enumerate(choices)]


def option_grid(widths: Sequence[Sequence[int]], precisions: Sequence[Sequence[str]]) -> list[list[Option]]:
    """Every (width, precision) pair of each prunable layer."""
    return [[(width, precision) for width in layer_widths for precision in layer_precisions]
            for layer_widths, layer_precisions in zip(widths, precisions, strict=False)]


class ChainCost:
    """A cost of `constant` plus one `term` per cell over the grid of options `grid` (one list per prunable layer);
    the first cell reads INPUT, the head writes `head` (the classes, in the head's precision)."""

    def __init__(self, grid: Sequence[Sequence[Option]], term: Term, *, head: Option, constant: float = 0.0,
                 unit: str = "", describe: Callable[[float], str] = str) -> None:
        self.grid = [sorted(options) for options in grid]
        self.term = term
        self.constant = constant
        self.head = head
        self.unit = unit
        self.describe = describe  # a cost in words, with its unit

    @property
    def widths(self) -> list[tuple[int, ...]]:
        """Each layer's widths, narrowest first."""
        return [tuple(sorted({width for width, _ in options})) for options in self.grid]

    @property
    def precisions(self) -> list[tuple[str, ...]]:
        """Each layer's precisions (and the head's, last)."""
        return [tuple(sorted({precision for _, precision in options})) for options in self.grid] + [(self.head[1],)]

    def total(self, options: Sequence[Option]) -> float:
        """The cost of the network of `options`."""
        ins, outs = [INPUT, *options], [*options, self.head]
        return self.constant + sum(self.term(cell, ins[cell], outs[cell]) for cell in range(len(ins)))

    @cached_property
    def _after(self) -> list[dict[Option, float]]:
        """_after[t][o]: the least the cells after layer t cost, with layer t at option o."""
        layers = len(self.grid)
        after: list[dict[Option, float]] = [{} for _ in range(layers)]
        after[-1] = {o: self.term(layers, o, self.head) for o in self.grid[-1]}
        for t in range(layers - 2, -1, -1):
            after[t] = {o: min(self.term(t + 1, o, b) + after[t + 1][b] for b in self.grid[t + 1])
                        for o in self.grid[t]}
        return after

    def cheapest(self) -> float:
        """The least any network of the grid costs."""
        return self.constant + min(self.term(0, INPUT, o) + self._after[0][o] for o in self.grid[0])

    def cheapest_options(self) -> tuple[Option, ...]:
        """The options of the network `cheapest` costs (the narrowest of equals)."""
        options: list[Option] = []
        for t in range(len(self.grid)):
            previous = options[-1] if options else INPUT
            options.append(min(self.grid[t], key=lambda o, t=t, a=previous: self.term(t, a, o) + self._after[t][o]))
        return tuple(options)

    def within(self, decided: Sequence[Option], budget: float) -> list[Option]:
        """The options the next layer (after the `decided` ones) may take so that some way of finishing the
        network stays within `budget`."""
        t = len(decided)
        ins = [INPUT, *decided]
        spent = self.constant + sum(self.term(cell, ins[cell], decided[cell]) for cell in range(t))
        return [o for o in self.grid[t] if spent + self.term(t, ins[t], o) + self._after[t][o] <= budget + 1e-12]


def macs_cost(arch: ModelParams, widths: Sequence[Sequence[int]],
              precisions: Sequence[Sequence[str]] | None = None) -> ChainCost:
    """The share of the prunable layers' multiply-adds a network of the grid keeps (`ModelParams.macs_kept`),
    whatever the precisions (by default int8 everywhere)."""
    full, layer_widths = arch.layer_macs(), arch.layer_widths()
    precisions = precisions or [("int8",)] * (len(widths) + 1)
    total = sum(full)
    shares = [1, *layer_widths]

    def term(cell: int, inputs: Option, outputs: Option) -> float:
        if cell == len(layer_widths):
            return 0.0  # the head is not prunable: the budget counts the prunable layers only
        return full[cell] * (inputs[0] / shares[cell]) * (outputs[0] / layer_widths[cell]) / total

    return ChainCost(option_grid(widths, precisions), term, head=(NUM_CLASSES, precisions[-1][0]),
                     unit="of the multiply-adds", describe=lambda share: f"{share:.0%} of the multiply-adds")


def latency_cost(table: LatencyTable, widths: Sequence[Sequence[int]], precisions: Sequence[Sequence[str]],
                 batch: int) -> ChainCost:
    """The latency table's estimate, in milliseconds per call at `batch`, of a network of the grid, each cell in
    the precision of its option (`LatencyTable.network_ms` as a sum of per-cell terms)."""
    cells = len(widths) + 1

    def term(cell: int, inputs: Option, outputs: Option) -> float:
        previous = None if cell == 0 else inputs[1]
        return table.pair_term(cell, inputs[0], outputs[0], outputs[1], previous, head=cell == cells - 1,
                               batch=batch)

    unit = f"ms per call at batch {batch}"
    return ChainCost(option_grid(widths, precisions), term, head=(NUM_CLASSES, precisions[-1][0]),
                     constant=table.floor(batch), unit=unit, describe=lambda ms: f"{ms:.3f} {unit}")


def size_cost(arch: ModelParams, widths: Sequence[Sequence[int]], precisions: Sequence[Sequence[str]]) -> ChainCost:
    """The bytes of a network's weights as compress's int8 files store them: each weighted layer's weights at one
    byte in int8 and four in fp32, its biases at four (int32 in int8), and in int8 each output channel's scale and
    zero point (five). What the file adds beyond that (the graph, the activations' scales) does not grow with the
    widths, so it is left out: the budget is a share of structured_int8's bytes on this same count."""
    shapes = [*arch.layers(), LayerShape(True, 1, 1, 1)]  # the head: a linear layer reading the embedding

    def term(cell: int, inputs: Option, outputs: Option) -> float:
        shape, int8 = shapes[cell], outputs[1] == "int8"
        weights = shape.kernel**2 * shape.fan * inputs[0] * outputs[0]
        return weights * (1 if int8 else 4) + outputs[0] * (4 + (5 if int8 else 0))

    return ChainCost(option_grid(widths, precisions), term, head=(NUM_CLASSES, precisions[-1][0]),
                     unit="bytes of weights", describe=lambda size: f"{size:,.0f} bytes of weights")
