"""The geometry of the architectures params.yaml describes, computed from the params alone (no torch): every
prunable layer's shape and width, its multiply-adds, how narrow it may become. Model construction
(groundwork.models.backbones), the params' own cross-field checks and the compression search all read it here, so
the three agree on what a layer is."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

from groundwork.data.canvas import IMAGE_SIDE  # every image, source or target, is brought to 28x28 gray by ingest

MIN_WIDTH, MIN_EMBEDDING = 4, 8  # the narrowest conv and embedding a model may have
LENET_KERNEL = 5  # LeNet-5's convs are 5x5 without padding, each followed by a 2x2 pool


class LayerShape(NamedTuple):
    """Where a prunable layer sits: a conv runs its `kernel` x `kernel` filter at every position of a `side` x
    `side` output map; a linear layer (kernel and side 1) reads `fan` inputs per unit of the layer before it
    (the flattened map's area after the last conv, the image's pixels for an MLP's first layer, else 1)."""

    linear: bool
    kernel: int
    side: int
    fan: int


class LayerGeometry:
    """Layer arithmetic of a model's params (groundwork.params.ModelParams inherits it, so callers ask the params
    themselves: `arch.layer_widths()`). Kept apart from the schema, which holds only the fields and their bounds."""

    if TYPE_CHECKING:  # the fields ModelParams declares (and validates); not fields of this class at run time
        arch: str
        channels: tuple[int, ...]
        inner_channels: tuple[int, ...] | None
        embedding_dim: int
        hidden: tuple[int, ...]

    @property
    def embedding_width(self) -> int:
        """Units of the embedding the head reads: the last hidden layer of an MLP, else `embedding_dim`."""
        return self.hidden[-1] if self.arch == "mlp" else self.embedding_dim

    def layers(self) -> tuple[LayerShape, ...]:
        """The shape of every prunable layer in forward order (the order of `layer_widths`); for a conv, `side`
        is its output map's side before any pool. A lenet5 whose maps run out has sides below 1 here."""
        if self.arch == "mlp":
            pixels = IMAGE_SIDE**2  # the first layer reads every pixel, each later one the units before it
            return tuple(LayerShape(True, 1, 1, pixels if index == 0 else 1) for index in range(len(self.hidden)))
        shapes, side = [], IMAGE_SIDE
        convs = 2 * len(self.channels) if self.arch == "cnn" else len(self.channels)
        for index in range(convs):
            if self.arch == "cnn":  # 3x3 convs keep the side; each block's pool halves it after its second conv
                shapes.append(LayerShape(False, 3, side, 1))
                side //= 2 if index % 2 else 1
            else:
                shapes.append(LayerShape(False, LENET_KERNEL, side - LENET_KERNEL + 1, 1))
                side = (side - LENET_KERNEL + 1) // 2
        return (*shapes, LayerShape(True, 1, 1, max(side, 0) ** 2))

    def layer_widths(self) -> tuple[int, ...]:
        """Output width of every prunable layer in forward order: cnn, each block's two convs then the embedding;
        lenet5, each conv then the embedding; mlp, each hidden layer."""
        if self.arch == "mlp":
            return self.hidden
        inner = self.inner_channels or self.channels
        convs = (width for pair in zip(inner, self.channels, strict=True) for width in pair) if self.arch == "cnn" \
            else self.channels
        return (*convs, self.embedding_dim)

    def layer_macs(self) -> tuple[int, ...]:
        """Multiply-adds per image of every prunable layer (`layer_widths` order): kernel area x inputs x outputs x
        positions for a conv, inputs x fan x outputs for a linear layer. The head is not prunable (it has one
        output per class)."""
        macs, inputs = [], 1  # the image's one grey channel
        for shape, width in zip(self.layers(), self.layer_widths(), strict=True):
            macs.append(shape.kernel**2 * shape.side**2 * shape.fan * inputs * width)
            inputs = width
        return tuple(macs)

    def layer_floors(self) -> tuple[int, ...]:
        """The narrowest each prunable layer may become: MIN_EMBEDDING units for the embedding (the last layer),
        MIN_WIDTH for the others, or the layer's own width where it is narrower still."""
        widths = self.layer_widths()
        return tuple(min(width, MIN_EMBEDDING if index == len(widths) - 1 else MIN_WIDTH)
                     for index, width in enumerate(widths))

    def lowest_keeps(self, min_keep: float, multiple: int = 1) -> tuple[float, ...]:
        """The smallest share of its outputs each prunable layer may keep: `min_keep`, or more where that would
        leave a layer narrower than its floor, rounded up to a multiple of `multiple` (or the full width)."""
        return tuple(min(width, math.ceil(max(min_keep * width, floor) / multiple - 1e-9) * multiple) / width
                     for floor, width in zip(self.layer_floors(), self.layer_widths(), strict=True))

    def width_grid(self, min_keep: float, multiple: int = 1) -> tuple[tuple[int, ...], ...]:
        """Every width each prunable layer may take in the search: from its lowest (`lowest_keeps`) up, the
        multiples of `multiple`, and its full width."""
        return tuple(tuple(sorted({*range(round(low * width), width, multiple), width}))
                     for low, width in zip(self.lowest_keeps(min_keep, multiple), self.layer_widths(), strict=True))

    def macs_kept(self, keeps: tuple[float, ...] | list[float]) -> float:
        """Share of the prunable layers' multiply-adds left when layer i keeps share keeps[i] of its outputs
        (a layer's cost scales with its own outputs and with the inputs the layer before it kept)."""
        full, kept, inputs = self.layer_macs(), 0.0, 1.0
        for macs, keep in zip(full, keeps, strict=True):
            kept += macs * inputs * keep
            inputs = keep
        return kept / sum(full)
