"""Every reader of files from elsewhere, fuzzed: each case gives a valid object or the project's own error naming
the file, never another exception.

Bounds checked on every case: time (hypothesis's deadline, FUZZ_DEADLINE) and memory (the process's address space
capped at what it uses plus the reader's stated limit plus HEADROOM, so an allocation the limits in
groundwork/data/untrusted.py should have stopped fails the case). Each reader gets the same families of cases:
random bytes, a valid file truncated, with bytes replaced or inserted, the valid file itself, and crafted files
aimed at what it parses (declared sizes, shapes, bombs). A fixed seed and 1,000 cases per reader by default;
`make fuzz` runs more with a random seed. `pytest tests/test_fuzz.py --hypothesis-show-statistics` lists how many
cases of each family ran.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import lzma
import os
import resource
import struct
import tracemalloc
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from groundwork.adaptive.incoming import read_arrivals
from groundwork.adaptive.labels import read_labels
from groundwork.compression.packing import MAGIC, load_packed, pack
from groundwork.data.datasets import Split, load_dataset, save_dataset
from groundwork.data.sources import load_image_folder
from groundwork.data.untrusted import (
    LZMA_BLOCK,
    MAX_ARCHIVE_BYTES,
    MAX_CHECKPOINT_BYTES,
    MAX_FOLDER_PIXELS,
    MAX_IMAGE_PIXELS,
    MAX_PACKED_BYTES,
    MAX_YAML_VALUES,
    GiB,
    MiB,
)
from groundwork.errors import CheckpointError, DataError
from groundwork.models.checkpoint import load_model, save_checkpoint
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params, ParamsError, load_params
from groundwork.params.data import DataSource
from groundwork.project import tiny_params_dict

CASES = int(os.environ.get("GROUNDWORK_FUZZ_CASES", "1000"))
FUZZ_DEADLINE = timedelta(seconds=5)
HEADROOM = 1 * GiB  # the test's own allocations (hypothesis, torch, the valid objects) on top of a reader's limit
# the seed: fixed in the suite, new each time under `make fuzz` (tests/conftest.py)
FUZZ = settings(max_examples=CASES, deadline=FUZZ_DEADLINE, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass(frozen=True)
class Case:
    """One fuzzed file: its family and content (shown by length and digest: hypothesis prints failing cases)."""

    family: str
    content: bytes

    def __repr__(self) -> str:
        digest = hashlib.sha256(self.content).hexdigest()[:16]
        return f"Case({self.family!r}, {len(self.content):,} bytes, sha256 {digest})"


@contextmanager
def address_space_cap(limit: int) -> Iterator[None]:
    """Cap this process's address space at its present size plus `limit` plus HEADROOM: an allocation beyond it
    fails (MemoryError, or torch's "can't allocate memory") instead of succeeding lazily."""
    used = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (used + limit + HEADROOM, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def hostile(valid: bytes, crafted: st.SearchStrategy[Case] | None = None) -> st.SearchStrategy[Case]:
    """The families every reader gets, plus its own crafted ones."""
    last = max(len(valid) - 1, 0)

    def replaced(edits: list[tuple[int, int]]) -> Case:
        content = bytearray(valid)
        for offset, value in edits:
            content[offset] = value
        return Case("bytes replaced", bytes(content))

    families = [
        st.binary(max_size=2048).map(lambda content: Case("random bytes", content)),
        st.integers(0, last).map(lambda size: Case("truncated", valid[:size])),
        st.lists(st.tuples(st.integers(0, last), st.integers(0, 255)), min_size=1, max_size=16).map(replaced),
        st.tuples(st.integers(0, len(valid)), st.binary(min_size=1, max_size=64)).map(
            lambda edit: Case("bytes inserted", valid[:edit[0]] + edit[1] + valid[edit[0]:])),
        st.just(Case("valid", valid)),
    ]
    return st.one_of(*families, *([crafted] if crafted is not None else []))


GENERIC = {"random bytes", "truncated", "bytes replaced", "bytes inserted", "valid"}


def check_tally(reader: str, tally: Counter[str]) -> None:
    """The run was not vacuous: at least CASES cases, of every generic family and some crafted ones; printed
    (`pytest -s`) for the record in docs/faults.md."""
    print(f"\n{reader}: {sum(tally.values()):,} cases: "
          + ", ".join(f"{family} {count}" for family, count in tally.most_common()))
    assert sum(tally.values()) >= CASES
    assert set(tally) >= GENERIC and set(tally) - GENERIC, sorted(tally)


def expect_valid_or(error: type[Exception], path: Path, case: Case, tally: Counter[str],
                    read: Callable[[], Any]) -> Any:
    """Run a reader on one case: the valid file must read; any other case reads or raises `error` naming `path`."""
    family = case.family
    tally[family] += 1
    try:
        return read()
    except error as exc:
        assert family != "valid", f"the valid file was refused: {exc}"
        assert str(path) in str(exc), f"the error does not name the file: {exc}"
        assert "allocate" not in str(exc), f"an allocation above the cap was attempted: {exc}"
        return None


def patch_declared_size(archive: bytes, size: int) -> bytes:
    """A zip whose central directory claims `size` bytes uncompressed for each member (a size bomb: nothing in the
    file is that large)."""
    content, offset = bytearray(archive), 0
    while (offset := content.find(b"PK\x01\x02", offset)) >= 0:
        struct.pack_into("<I", content, offset + 24, size)
        offset += 4
    return bytes(content)


def npy_bytes(header: dict[str, Any], data: bytes) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, header)
    return stream.getvalue() + data


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", method) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return stream.getvalue()


# ---- dataset files (.npz) and incoming batches ----

DTYPES = ["|u1", "<i8", "<f4", "|b1", "<U64", "|O", "|V0", "<M8[s]", "|S0", [("a", "<i4")]]


def crafted_npz(member: str) -> st.SearchStrategy[Case]:
    """An .npz whose array header declares any shape and dtype over a few bytes of data, or whose zip declares
    more bytes than the limit."""
    header = st.fixed_dictionaries({
        "descr": st.sampled_from(DTYPES),
        "fortran_order": st.booleans(),
        "shape": st.lists(st.one_of(st.integers(0, 64), st.integers(-2, 2 ** 62)), max_size=4).map(tuple),
    })
    declared = st.tuples(header, st.binary(max_size=256)).map(
        lambda case: Case("npy header declares shape", zip_of({member: npy_bytes(*case)})))
    bomb = st.sampled_from([MAX_ARCHIVE_BYTES + 1, 2 ** 32 - 1]).map(
        lambda size: Case("zip declares a huge member", patch_declared_size(zip_of({member: b"\0" * 64}), size)))
    return st.one_of(declared, bomb)


@pytest.fixture(scope="module")
def valid_dataset(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    generator = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("dataset") / "valid.npz"
    save_dataset(path, {name: Split(generator.integers(0, 256, (8, 28, 28), dtype=np.uint8),
                                    generator.integers(0, 10, 8).astype(np.int64)) for name in ("train", "test")})
    return path.read_bytes()


def test_dataset_files(tmp_path: Path, valid_dataset: bytes) -> None:
    path = tmp_path / "data.npz"

    tally: Counter[str] = Counter()

    @FUZZ
    @given(hostile(valid_dataset, crafted_npz("train_images.npy")))
    def case(generated: Case) -> None:
        content = generated.content
        path.write_bytes(content)
        loaded = expect_valid_or(DataError, path, generated, tally,
                                 lambda: load_dataset(path, splits=("train",)))
        if loaded is not None:
            assert loaded[0]["train"].images.shape[1:] == (28, 28)

    with address_space_cap(MAX_ARCHIVE_BYTES):
        case()
    check_tally("dataset files", tally)


def test_incoming_batches(tmp_path: Path, tiny_params: Params) -> None:
    """read_arrivals never raises for a bad batch: it sets the batch aside with its reason."""
    generator = np.random.default_rng(1)
    folder = tmp_path / "incoming"
    folder.mkdir()
    valid = io.BytesIO()
    np.savez_compressed(valid, images=generator.integers(0, 256, (6, 28, 28), dtype=np.uint8))

    tally: Counter[str] = Counter()

    @FUZZ
    @given(hostile(valid.getvalue(), crafted_npz("images.npy")))
    def case(generated: Case) -> None:
        family, content = generated.family, generated.content
        tally[family] += 1
        (folder / "batch.npz").write_bytes(content)
        arrivals = read_arrivals(folder, tiny_params.ingest.target, min_batch=1)
        assert len(arrivals.batches) + len(arrivals.set_aside) == 1
        if family == "valid":
            assert arrivals.batches, arrivals.set_aside
        for batch in arrivals.batches:
            assert batch.images.dtype == np.uint8 and batch.images.shape[1:] == (28, 28)

    with address_space_cap(MAX_ARCHIVE_BYTES):
        case()
    check_tally("incoming batches", tally)


# ---- checkpoints ----

@pytest.fixture(scope="module")
def tiny_model(tiny_params: Params) -> DigitNet:
    torch.manual_seed(0)  # the same valid file every run: the fixed seed then gives the same cases
    return DigitNet(tiny_params.model).eval()


def checkpoint_bytes(payload: dict[str, Any], **options: Any) -> bytes:
    stream = io.BytesIO()
    torch.save(payload, stream, **options)
    return stream.getvalue()


def crafted_checkpoints(model: DigitNet) -> st.SearchStrategy[Case]:
    """Payloads that describe a model of any size (widths, classes, factorised ranks), tensors of any declared
    shape, the legacy (non-zip) format, and zips that declare huge members."""
    state = {key: value.detach() for key, value in model.state_dict().items()}
    base = {"format": "groundwork-checkpoint/1", "stage": "pretrain", "arch": model.arch.model_dump(mode="json"),
            "num_classes": 10, "factorized": {}, "params": {}, "metrics": {}, "state_dict": state}
    integers = st.one_of(st.integers(-3, 300), st.integers(-2 ** 40, 2 ** 40))
    described = st.fixed_dictionaries({
        "arch": st.one_of(st.fixed_dictionaries({"channels": st.lists(integers, max_size=4),
                                                 "inner_channels": st.none(), "embedding_dim": integers,
                                                 "dropout": st.floats(allow_nan=True)},
                                                optional={"arch": st.sampled_from(["cnn", "mlp", "lenet5", "vit"]),
                                                          "hidden": st.lists(integers, max_size=6),
                                                          "pixel_std": st.floats(allow_nan=True)}),
                          st.just(base["arch"]), st.none(), st.text(max_size=5)),
        "num_classes": st.one_of(integers, st.booleans(), st.text(max_size=3)),
        "factorized": st.one_of(st.dictionaries(st.sampled_from(["", "head", "backbone", "backbone.embed.1",
                                                                 "backbone.features.0.0", "nothing.here"]),
                                                integers, max_size=2), st.lists(st.integers(), max_size=2)),
    }).map(lambda changes: Case("payload describes a model", checkpoint_bytes({**base, **changes})))
    shaped = st.lists(st.integers(0, 2 ** 20), min_size=1, max_size=3).map(
        lambda shape: Case("a tensor declares a huge shape",
                       checkpoint_bytes({**base, "state_dict": {**state,
                                                                "head.weight": torch.zeros(1).expand(*shape)}})))
    legacy = st.just(Case("legacy format", checkpoint_bytes(base, _use_new_zipfile_serialization=False)))
    bomb = st.just(Case("zip declares a huge member", patch_declared_size(checkpoint_bytes(base), 2 ** 32 - 1)))
    return st.one_of(described, shaped, legacy, bomb)


def test_checkpoints(tmp_path: Path, tiny_model: DigitNet) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, tiny_model, stage="pretrain", params={}, metrics={})

    tally: Counter[str] = Counter()

    @FUZZ
    @given(hostile(path.read_bytes(), crafted_checkpoints(tiny_model)))
    def case(generated: Case) -> None:
        content = generated.content
        fuzzed = tmp_path / "fuzzed.pt"
        fuzzed.write_bytes(content)
        loaded = expect_valid_or(CheckpointError, fuzzed, generated, tally, lambda: load_model(fuzzed))
        if loaded is not None:
            assert isinstance(loaded[0], DigitNet)

    with address_space_cap(MAX_CHECKPOINT_BYTES):
        case()
    check_tally("checkpoints", tally)


# ---- packed models ----

def packed_content(body: bytes) -> bytes:
    return MAGIC + lzma.compress(body, preset=0)


def crafted_packed(valid: bytes) -> st.SearchStrategy[Case]:
    """A well-formed container around a header whose tensors declare any shape, kind, size and codebook, and
    headers that are not what pack writes at all."""
    body = lzma.decompress(valid[len(MAGIC):])
    (length,) = struct.unpack_from("<I", body)
    header, tensors = json.loads(body[4:4 + length]), body[4 + length:]
    entry = st.fixed_dictionaries({
        "shape": st.lists(st.one_of(st.integers(0, 40), st.integers(-1, 2 ** 40)), max_size=4),
        "bytes": st.one_of(st.integers(0, 4096), st.integers(-1, 2 ** 40)),
        "kind": st.sampled_from(["shared", "float16", "int", "pickle"]),
        "codebook": st.lists(st.floats(allow_nan=True), max_size=300),
    })

    def with_entry(case: tuple[int, dict[str, Any]]) -> Case:
        index, changes = case
        entries = [dict(item) for item in header["tensors"]]
        entries[index % len(entries)].update(changes)
        text = json.dumps({**header, "tensors": entries}).encode()
        return Case("header declares a tensor", packed_content(struct.pack("<I", len(text)) + text + tensors))

    def with_header(text: bytes) -> Case:
        return Case("header is not pack's", packed_content(struct.pack("<I", len(text)) + text + tensors))

    foreign = st.one_of(st.binary(max_size=64), st.just(b"[" * 100_000), st.just(b'{"tensors": 5}'),
                        st.just(json.dumps({**header, "num_classes": 10 ** 9}).encode()),
                        st.just(json.dumps({**header, "arch": {"channels": [10 ** 6]}}).encode()))
    lengths = st.integers(0, 2 ** 32 - 1).map(
        lambda size: Case("header length", packed_content(struct.pack("<I", size) + body[4:])))
    return st.one_of(st.tuples(st.integers(0, 1000), entry).map(with_entry), foreign.map(with_header), lengths,
                     st.just(Case("two streams", valid + lzma.compress(b"more"))))


def test_packed_models(tmp_path: Path, tiny_model: DigitNet) -> None:
    path = tmp_path / "model.gwpk"
    pack(tiny_model, path, bits=4)
    valid = path.read_bytes()

    tally: Counter[str] = Counter()

    @FUZZ
    @given(hostile(valid, crafted_packed(valid)))
    def case(generated: Case) -> None:
        content = generated.content
        fuzzed = tmp_path / "fuzzed.gwpk"
        fuzzed.write_bytes(content)
        loaded = expect_valid_or(CheckpointError, fuzzed, generated, tally, lambda: load_packed(fuzzed))
        if loaded is not None:
            assert isinstance(loaded, DigitNet)

    with address_space_cap(MAX_PACKED_BYTES * 8):
        case()
    check_tally("packed models", tally)


def test_a_10_kb_lzma_bomb_is_refused_before_it_allocates_past_the_limit(tmp_path: Path) -> None:
    """64 MiB of zeros compress to under 10 KB, which plain lzma.decompress hands back whole; a 60-byte stream
    can declare a 1.5 GiB dictionary, which the decoder would allocate. Both are refused, each having allocated
    at most MAX_PACKED_BYTES and the block being decoded (its buffer included)."""
    bombs = {"output": lzma.compress(bytes(64 * MiB), preset=0),
             "dictionary": lzma.compress(b"abc", filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1536 * MiB}])}
    assert len(lzma.decompress(bombs["output"])) == 64 * MiB > MAX_PACKED_BYTES
    reasons = {"output": "decompresses to more than the limit of 16,777,216", "dictionary": "Memory usage limit"}
    for kind, bomb in bombs.items():
        assert len(bomb) <= 10_000
        path = tmp_path / f"{kind}.gwpk"
        path.write_bytes(MAGIC + bomb)
        tracemalloc.start()
        try:
            with pytest.raises(CheckpointError, match=rf"{path}: .*{reasons[kind]}"):
                load_packed(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak <= MAX_PACKED_BYTES + 3 * LZMA_BLOCK, f"{kind}: {peak:,} bytes allocated refusing the bomb"


# ---- image files: incoming batch folders and the image-folder source ----

def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height gray pixels over a few bytes of image data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def image_bytes(format_name: str, side: int = 20) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
        stream, format=format_name)
    return stream.getvalue()


def crafted_images() -> st.SearchStrategy[Case]:
    """PNGs declaring any size (up to 2**31 - 1 a side, beyond MAX_IMAGE_PIXELS and PIL's own limit), and a
    valid JPEG with bytes replaced (its decoder differs from PNG's)."""
    sides = st.one_of(st.integers(1, 64), st.integers(1, 2 ** 31 - 1))
    declared = st.tuples(sides, sides).map(lambda size: Case("PNG declares a size", png_claiming(*size)))
    jpeg = image_bytes("JPEG")
    edited = st.lists(st.tuples(st.integers(0, len(jpeg) - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
        lambda edits: Case("JPEG bytes replaced", bytes(_edited(jpeg, edits))))
    return st.one_of(declared, edited, st.just(Case("JPEG valid", jpeg)))


def _edited(content: bytes, edits: list[tuple[int, int]]) -> bytearray:
    edited = bytearray(content)
    for offset, value in edits:
        edited[offset] = value
    return edited


def test_incoming_image_folders(tmp_path: Path, tiny_params: Params) -> None:
    folder = tmp_path / "incoming"
    (folder / "batch").mkdir(parents=True)

    tally: Counter[str] = Counter()

    @FUZZ
    @given(hostile(image_bytes("PNG"), crafted_images()))
    def case(generated: Case) -> None:
        family, content = generated.family, generated.content
        tally[family] += 1
        (folder / "batch" / "digit.png").write_bytes(content)
        arrivals = read_arrivals(folder, tiny_params.ingest.target, min_batch=1)
        assert len(arrivals.batches) + len(arrivals.set_aside) == 1
        if family in ("valid", "JPEG valid"):
            assert arrivals.batches, arrivals.set_aside

    with address_space_cap(MAX_IMAGE_PIXELS * 4 * 2):  # RGB and its formatted copy
        case()
    check_tally("incoming image folders", tally)


def test_image_folder_source(tmp_path: Path, tiny_params: Params) -> None:
    root = tmp_path / "digits"
    valid = image_bytes("PNG")
    for label in range(10):
        (root / str(label)).mkdir(parents=True)
        (root / str(label) / "a.png").write_bytes(valid)
    cfg = DataSource.model_validate({**tiny_params.ingest.target.model_dump(), "dataset": "image_folder",
                                     "root": str(root)})
    fuzzed = root / "7" / "b.png"

    tally: Counter[str] = Counter()

    @FUZZ
    @given(hostile(valid, crafted_images()))
    def case(generated: Case) -> None:
        content = generated.content
        fuzzed.write_bytes(content)
        loaded = expect_valid_or(DataError, fuzzed, generated, tally,
                                 lambda: load_image_folder(cfg, key="ingest.target"))
        if loaded is not None:
            assert len(loaded[0]) == 11

    with address_space_cap(MAX_FOLDER_PIXELS * 3):
        case()
    check_tally("image folder source", tally)


# ---- params files ----

def crafted_params(valid: str) -> st.SearchStrategy[Case]:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + level)}: &{chr(98 + level)} [{', '.join(['*' + chr(97 + level)] * 10)}]\n" for level in range(8))
    texts = st.one_of(
        st.just(Case("YAML aliases expand exponentially", (laughs + valid).encode())),
        st.integers(1, 1_200).map(lambda depth: Case("nested", ("[" * depth + "]" * depth).encode())),
        st.just(Case("larger than the limit", valid.encode() + b"#" * (2 * MiB))),
        st.text(max_size=300).map(lambda text: Case("random text", text.encode())),
        st.binary(max_size=64).map(lambda raw: Case("not UTF-8", b"\xff\xfe" + raw)),
        st.sampled_from(["!!python/object:os.system {}", "ingest: !!binary aGVsbG8=", "ingest: 2026-12-01",
                         "? [a, b]\n: c", "pretrain: {epochs: .nan}", "*undefined"]).map(
            lambda text: Case("YAML tags and keys", text.encode())),
    )
    return texts


def test_params_files(tmp_path: Path) -> None:
    valid = yaml.safe_dump(tiny_params_dict(), sort_keys=False)
    path = tmp_path / "params.yaml"

    tally: Counter[str] = Counter()

    @FUZZ
    @given(hostile(valid.encode(), crafted_params(valid)))
    def case(generated: Case) -> None:
        content = generated.content
        path.write_bytes(content)
        params = expect_valid_or(ParamsError, path, generated, tally, lambda: load_params(path))
        if params is not None:
            assert isinstance(params, Params)

    with address_space_cap(MAX_YAML_VALUES * 1024):
        case()
    check_tally("params files", tally)


# ---- labels CSVs ----

KNOWN = {f"{'a' * 12}-{index:05d}" for index in range(5)}


def labels_csv(rows: Sequence[Sequence[str]], header: Sequence[str] = ("image_id", "label", "purpose")) -> bytes:
    stream = io.StringIO()
    writer = csv.writer(stream)
    writer.writerow(header)
    writer.writerows(rows)
    return stream.getvalue().encode()


def crafted_labels() -> st.SearchStrategy[Case]:
    """Rows of any fields under any header, fields longer than the csv module's limit, NUL bytes."""
    field = st.one_of(st.sampled_from(sorted(KNOWN)), st.sampled_from(["", "3", "12", "-1", "٣", "1_0", "train",
                                                                       "holdout", "9" * 5000]),
                      st.text(max_size=12))
    header = st.one_of(st.just(("image_id", "label", "purpose")), st.just(("image_id", "label")),
                       st.lists(st.sampled_from(["image_id", "label", "purpose", "x", ""]), max_size=4))
    rows = st.tuples(st.lists(st.lists(field, max_size=5), max_size=6), header).map(
        lambda case: Case("rows", labels_csv(case[0], case[1])))
    huge = st.just(Case("field over the csv limit", labels_csv([["a" * 200_000, "3"]])))
    nul = st.just(Case("NUL byte", labels_csv([[sorted(KNOWN)[0], "3\0"]])))
    return st.one_of(rows, huge, nul)


def test_labels_csvs(tmp_path: Path) -> None:
    folder = tmp_path / "labels"
    folder.mkdir()
    path = folder / "given.csv"
    valid = labels_csv([[image_id, str(index), "train"] for index, image_id in enumerate(sorted(KNOWN))])

    tally: Counter[str] = Counter()

    @FUZZ
    @given(hostile(valid, crafted_labels()))
    def case(generated: Case) -> None:
        content = generated.content
        path.write_bytes(content)
        labels = expect_valid_or(DataError, path, generated, tally, lambda: read_labels(folder, KNOWN))
        if labels is not None:
            assert set(labels) <= KNOWN and all(0 <= label.label <= 9 for label in labels.values())

    with address_space_cap(64 * MiB):
        case()
    check_tally("labels csvs", tally)


def test_the_cap_catches_an_allocation_past_it() -> None:
    """The memory bound above can fail: an array larger than the cap is refused while it is in place."""
    with address_space_cap(64 * MiB), pytest.raises(MemoryError):
        np.ones(HEADROOM + 256 * MiB, dtype=np.uint8)


def test_the_crafted_size_bomb_claims_more_than_it_holds(tmp_path: Path) -> None:
    """The size bomb the readers are fed is a zip that still opens, and claims 4 GiB over 64 bytes."""
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(patch_declared_size(zip_of({"a.npy": b"\0" * 64}), 2 ** 32 - 1))
    with zipfile.ZipFile(bomb) as archive:
        assert archive.infolist()[0].file_size == 2 ** 32 - 1
