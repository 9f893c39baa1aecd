"""What a candidate network costs, for the search's budget: a sum of one term per cell (each prunable layer, then
the head), each term depending only on the widths on either side of its cell, so the cheapest way to finish a
network from any layer on is a small dynamic programme over the width grid.

Two costs have that shape. Multiply-adds: a layer's scale with its own outputs and with the inputs the layer
before it kept. The latency table's estimate (groundwork.search.latency): each cell's time depends on its input
and output widths, and an int8 -> int8 edge on the width between them. Latency is not monotone in the widths (in
int8, 8 channels cost more than 16 here: quantizing them costs more than computing them), which is why the search
asks the programme for the cheapest completion instead of assuming every later layer at its narrowest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property

from groundwork.params.training import ModelParams
from groundwork.search.latency import LatencyTable

Term = Callable[[int, int, int], float]  # (cell, input width, output width) -> that cell's share of the cost


class ChainCost:
    """A cost of `constant` plus one `term` per cell over the width grid `grid` (one tuple per prunable layer);
    the first cell reads 1 channel, the head writes `classes` outputs."""

    def __init__(self, grid: Sequence[Sequence[int]], term: Term, *, constant: float = 0.0, classes: int = 10,
                 unit: str = "") -> None:
        self.grid = [tuple(sorted(widths)) for widths in grid]
        self.term = term
        self.constant = constant
        self.classes = classes
        self.unit = unit

    def total(self, widths: Sequence[int]) -> float:
        """The cost of the network at `widths`."""
        ins, outs = [1, *widths], [*widths, self.classes]
        return self.constant + sum(self.term(cell, ins[cell], outs[cell]) for cell in range(len(ins)))

    @cached_property
    def _after(self) -> list[dict[int, float]]:
        """_after[t][w]: the least the cells after layer t cost, with layer t at width w."""
        layers = len(self.grid)
        after: list[dict[int, float]] = [{} for _ in range(layers)]
        after[-1] = {w: self.term(layers, w, self.classes) for w in self.grid[-1]}
        for t in range(layers - 2, -1, -1):
            after[t] = {w: min(self.term(t + 1, w, b) + after[t + 1][b] for b in self.grid[t + 1])
                        for w in self.grid[t]}
        return after

    def cheapest(self) -> float:
        """The least any network of the grid costs."""
        return self.constant + min(self.term(0, 1, w) + self._after[0][w] for w in self.grid[0])

    def cheapest_widths(self) -> tuple[int, ...]:
        """The widths of the network `cheapest` costs (the narrowest of equals)."""
        widths: list[int] = []
        for t in range(len(self.grid)):
            previous = widths[-1] if widths else 1
            widths.append(min(self.grid[t], key=lambda w, t=t, a=previous: self.term(t, a, w) + self._after[t][w]))
        return tuple(widths)

    def within(self, decided: Sequence[int], budget: float) -> list[int]:
        """The widths the next layer (after the `decided` ones) may take so that some way of finishing the
        network stays within `budget`."""
        t = len(decided)
        spent = self.constant + sum(self.term(cell, ([1, *decided])[cell], decided[cell]) for cell in range(t))
        previous = decided[-1] if decided else 1
        return [w for w in self.grid[t] if spent + self.term(t, previous, w) + self._after[t][w] <= budget + 1e-12]


def macs_cost(arch: ModelParams, grid: Sequence[Sequence[int]]) -> ChainCost:
    """The share of the prunable layers' multiply-adds a network of the grid keeps (`ModelParams.macs_kept`)."""
    full, widths = arch.layer_macs(), arch.layer_widths()
    total = sum(full)
    shares = [1, *widths]

    def term(cell: int, inputs: int, outputs: int) -> float:
        if cell == len(widths):
            return 0.0  # the head is not prunable: the budget counts the prunable layers only
        return full[cell] * (inputs / shares[cell]) * (outputs / widths[cell]) / total

    return ChainCost(grid, term, unit="of the multiply-adds")


def latency_cost(table: LatencyTable, grid: Sequence[Sequence[int]], precisions: Sequence[str],
                 batch: int) -> ChainCost:
    """The latency table's estimate, in milliseconds per call at `batch`, of a network of the grid with each cell
    in its precision of `precisions` (`LatencyTable.network_ms` as a sum of per-cell terms)."""
    def term(cell: int, inputs: int, outputs: int) -> float:
        return table.cell_term(cell, inputs, outputs, precisions, batch)

    return ChainCost(grid, term, constant=table.floor(batch), unit=f"ms per call at batch {batch}")
