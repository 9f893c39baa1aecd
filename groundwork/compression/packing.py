"""The packed format (the Deep Compression recipe, Han et al. 2016): a pruned model's weights shared through a
small per-layer codebook (k-means), stored as one symbol per weight (0 for a pruned weight), and the whole
file entropy-coded with LZMA, whose range coder turns mostly-zero symbols into a fraction of a bit each.
`load_packed` restores a runnable DigitNet."""

from __future__ import annotations

import json
import lzma
import math
import struct
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt
from torch import nn
from torch.nn.utils import parametrize

from groundwork.data.atomic import atomic_path
from groundwork.data.untrusted import MAX_PACKED_BYTES, decompress_lzma
from groundwork.errors import CheckpointError
from groundwork.models.checkpoint import MAX_CLASSES, build_model
from groundwork.models.digitnet import DigitNet, prunable_layers

MAGIC = b"GWPACK01"
KMEANS_ITERATIONS = 30


def share_weights(values: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means of `values` with centroids initialised evenly between min and max (the initialisation
    Deep Compression found best: large weights keep a centroid of their own); return (codebook, codes).
    Values that already take at most `clusters` distinct values are their own codebook, exactly."""
    distinct = values.unique()
    if len(distinct) <= clusters:
        return distinct, torch.searchsorted(distinct, values)
    codebook = torch.linspace(float(values.min()), float(values.max()), clusters, dtype=torch.float64)
    data = values.double()
    for _ in range(KMEANS_ITERATIONS):
        codes = (data[:, None] - codebook[None]).abs().argmin(1)
        sums = torch.zeros_like(codebook).index_add_(0, codes, data)
        counts = torch.bincount(codes, minlength=clusters)
        codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook)
    codes = (data[:, None] - codebook[None]).abs().argmin(1)
    return codebook.float(), codes


class _Codebook(nn.Module):
    """A parametrization tying a weight to its codebook: weight = [0, *codebook][symbols], with the symbols
    fixed and the codebook trainable, so fine-tuning moves each shared value by the summed gradient of the
    weights that share it (Deep Compression's centroid fine-tuning)."""

    def __init__(self, symbols: torch.Tensor, codebook: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("symbols", symbols)
        self.codebook = nn.Parameter(codebook)

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.codebook.new_zeros(1), self.codebook])[self.symbols]


def tie_to_codebooks(model: DigitNet, bits: int) -> None:
    """Share every conv/linear weight through a per-layer k-means codebook of 2**bits - 1 values (zeros stay
    zero); until `untie`, training moves the codebooks, not the weights."""
    for module, name in prunable_layers(model):
        weight = getattr(module, name).detach()
        flat, symbols = weight.flatten(), torch.zeros(weight.numel(), dtype=torch.int64, device=weight.device)
        nonzero = flat != 0
        codebook, codes = share_weights(flat[nonzero].cpu(), min(2 ** bits - 1, max(1, int(nonzero.sum()))))
        symbols[nonzero] = codes.to(weight.device) + 1
        parametrize.register_parametrization(module, name, _Codebook(symbols.reshape(weight.shape),
                                                                     codebook.to(weight.device)), unsafe=True)
        module.parametrizations[name].original.requires_grad_(False)


def untie(model: DigitNet) -> None:
    """Fold the codebooks back into plain weights (each weight its shared value)."""
    for module, name in prunable_layers(model):
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def _shared_tensor(weight: torch.Tensor, bits: int) -> tuple[dict[str, Any], bytes]:
    flat = weight.detach().flatten()
    nonzero = flat != 0
    symbols = torch.zeros(flat.numel(), dtype=torch.uint8)
    codebook = torch.zeros(0)
    if nonzero.any():
        codebook, codes = share_weights(flat[nonzero], min(2 ** bits - 1, int(nonzero.sum())))
        symbols[nonzero] = (codes + 1).to(torch.uint8)  # 0 stays "pruned"
    return {"kind": "shared", "codebook": codebook.tolist()}, symbols.numpy().tobytes()


def _dense_tensor(tensor: torch.Tensor) -> tuple[dict[str, Any], bytes]:
    if not tensor.is_floating_point():  # BatchNorm's batch counter
        return {"kind": "int", "values": tensor.flatten().tolist()}, b""
    return {"kind": "float16"}, tensor.detach().to(torch.float16).numpy().tobytes()


def pack(model: DigitNet, path: Path, *, bits: int) -> None:
    """Write `model` in the packed format: conv/linear weights shared through 2**bits - 1 values plus zero,
    every other tensor (BatchNorm, biases) in float16."""
    shared = {id(getattr(module, name)) for module, name in prunable_layers(model)}
    entries, chunks = [], []
    for name, tensor in model.state_dict(keep_vars=True).items():
        entry, chunk = _shared_tensor(tensor, bits) if id(tensor) in shared else _dense_tensor(tensor)
        entries.append({"name": name, "shape": list(tensor.shape), "bytes": len(chunk), **entry})
        chunks.append(chunk)
    header = json.dumps({"arch": model.arch.model_dump(mode="json"), "num_classes": model.num_classes,
                         "factorized": model.factorized, "tensors": entries}, separators=(",", ":")).encode()
    body = struct.pack("<I", len(header)) + header + b"".join(chunks)
    with atomic_path(path) as tmp:
        tmp.write_bytes(MAGIC + lzma.compress(body, preset=9 | lzma.PRESET_EXTREME))


class _Tensor(BaseModel):
    """One tensor of a packed file's header, as `pack` writes it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[NonNegativeInt] = Field(max_length=8)
    bytes: NonNegativeInt
    kind: Literal["shared", "float16", "int"]
    codebook: list[float] = Field(default=[], max_length=255)  # shared: symbol s > 0 is codebook[s - 1]
    values: list[int] = []  # int: the tensor's values

    def payload_bytes(self) -> int:
        """The bytes of body this tensor must have, from its shape and kind."""
        return math.prod(self.shape) * {"shared": 1, "float16": 2, "int": 0}[self.kind]


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arch: dict[str, Any]
    num_classes: int = Field(ge=1, le=MAX_CLASSES)
    factorized: dict[str, PositiveInt]
    tensors: list[_Tensor] = Field(max_length=1000)


def _restore(entry: _Tensor, chunk: bytes) -> torch.Tensor:
    if entry.kind == "int":
        if len(entry.values) != math.prod(entry.shape):
            raise ValueError(f"tensor {entry.name}: {len(entry.values)} values for shape {entry.shape}")
        return torch.tensor(entry.values, dtype=torch.int64).reshape(entry.shape)
    if entry.kind == "float16":
        return torch.from_numpy(np.frombuffer(chunk, dtype=np.float16).astype(np.float32)).reshape(entry.shape)
    values = np.array([0.0, *entry.codebook], dtype=np.float32)
    symbols = np.frombuffer(chunk, dtype=np.uint8)
    if symbols.size and symbols.max() >= len(values):
        raise ValueError(f"tensor {entry.name}: symbol {symbols.max()} beyond its {len(entry.codebook)}-value codebook")
    return torch.from_numpy(values[symbols]).reshape(entry.shape)  # uint8 indices: no int64 copy of the symbols


def _decoded(raw: bytes) -> tuple[_Header, bytes]:
    """The header and tensor bytes of a packed file's content, every declared size checked against the body."""
    body = decompress_lzma(raw[len(MAGIC):], limit=MAX_PACKED_BYTES)
    if len(body) < 4:
        raise ValueError("no header")
    (length,) = struct.unpack_from("<I", body)
    if 4 + length > len(body):
        raise ValueError(f"header of {length:,} bytes in a body of {len(body):,}")
    header = _Header.model_validate_json(body[4:4 + length])
    tensors = body[4 + length:]
    for entry in header.tensors:
        if entry.bytes != entry.payload_bytes():
            raise ValueError(f"tensor {entry.name}: {entry.bytes:,} bytes for shape {entry.shape} ({entry.kind})")
    declared = sum(entry.bytes for entry in header.tensors)
    if declared != len(tensors):
        raise ValueError(f"the header declares {declared:,} bytes of tensors, the body holds {len(tensors):,}")
    return header, tensors


def load_packed(path: Path | str) -> DigitNet:
    """Decode a packed file into a runnable DigitNet (eval mode); errors name the file. Sizes are checked before
    they are allocated: the decoded body at most MAX_PACKED_BYTES, every tensor exactly the bytes its shape needs."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: packed model not found (run the compress stage)") from None
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a packed model (expected the {MAGIC.decode()} header)")
    try:
        header, tensors = _decoded(raw)
        offset, state = 0, {}
        for entry in header.tensors:
            state[entry.name] = _restore(entry, tensors[offset:offset + entry.bytes])
            offset += entry.bytes
        model = build_model(header.arch, header.num_classes, header.factorized)
        model.load_state_dict(state)
    except (struct.error, ValueError, RuntimeError) as exc:  # pydantic's ValidationError is a ValueError
        raise CheckpointError(f"{path}: corrupt or truncated packed model ({exc})") from None
    return model.eval()
