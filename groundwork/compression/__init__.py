"""Model compression: variant names, pruning, structured pruning, low-rank, packing, ONNX export and int8."""
