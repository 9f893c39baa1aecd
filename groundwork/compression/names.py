"""The one list of model variant names: params, the compress stage, the evaluate stage and the tests read it here.

Kept free of heavy imports: the params model builds its `Literal` from it.
"""

from __future__ import annotations

from typing import Literal, get_args

# The transferred PyTorch model itself: the reference every variant is measured against.
REFERENCE = "fp32"
# What the compress stage writes and lists in its manifest, in the order it makes them.
ExportedVariant = Literal["fp32_onnx", "int8", "pruned", "structured", "searched", "lowrank", "structured_int8",
                          "searched_int8", "packed"]
VariantName = Literal["fp32", ExportedVariant]  # the reference first (nested Literals flatten)
EXPORTED: tuple[str, ...] = get_args(ExportedVariant)
# The variants written as ONNX files: each is logged as the served classifier and may be registered (the fp32
# reference is served as fp32_onnx, the same weights; packed is the project's own format).
ServedVariant = Literal["fp32_onnx", "int8", "pruned", "structured", "searched", "lowrank", "structured_int8",
                        "searched_int8"]
SERVED: tuple[str, ...] = get_args(ServedVariant)
VARIANTS: tuple[str, ...] = get_args(VariantName)
# The fp32 model in each runtime: the fastest of them is the speed baseline.
FP32_RUNTIMES = (REFERENCE, "fp32_onnx")

# How each served variant is made from fp32 weights, so that a model fine-tuned from a champion's weights can be
# served in the champion's own form: the checkpoint behind it (compress's file of that name; the reference's is the
# transferred model), whether its pruned zeros must stay zero, and whether it is quantized to int8.
FP32_WEIGHTS: dict[str, str] = {"fp32_onnx": REFERENCE, "int8": REFERENCE, "pruned": "pruned",
                                "structured": "structured", "searched": "searched", "lowrank": "lowrank",
                                "structured_int8": "structured", "searched_int8": "searched"}
SPARSE: frozenset[str] = frozenset({"pruned"})
QUANTIZED: frozenset[str] = frozenset({"int8", "structured_int8", "searched_int8"})
