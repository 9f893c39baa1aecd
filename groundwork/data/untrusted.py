"""Readers for files that may come from elsewhere (a DVC remote, another machine, a user): every size a file
declares about itself is checked against a limit before anything of that size is allocated, so a small hostile
file (a decompression bomb, a header claiming a huge shape, an image declaring billions of pixels, YAML whose
aliases expand it a billion times) is refused with its reason instead of exhausting memory.

The helpers raise ValueError with the reason alone; each caller names the file in its own error type.
"""

from __future__ import annotations

import io
import lzma
import math
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

MiB = 1 << 20
GiB = 1 << 30
# One .npz (a dataset or an incoming batch), decompressed: 2.7 million 28x28 images with their labels.
MAX_ARCHIVE_BYTES = 2 * GiB
# One checkpoint's members: the widest DigitNet the params allow is about 30 MB of float32 weights.
MAX_CHECKPOINT_BYTES = 1 * GiB
# A packed model's decoded body (one byte a weight): the widest DigitNet the params allow needs about 7 MiB.
MAX_PACKED_BYTES = 16 * MiB
# The LZMA decoder's own memory, mostly the dictionary a stream declares: pack's preset 9 needs 65 MiB, and a
# crafted stream may declare up to 4 GiB.
MAX_LZMA_MEMORY = 80 * MiB
LZMA_BLOCK = 1 * MiB  # decoded at a time
# One image file, from its header before decoding: an 8192 x 8192 photo. PIL's own check is 89M / 179M pixels.
MAX_IMAGE_PIXELS = 1 << 26
MAX_IMAGE_FILE_BYTES = 256 * MiB
# All images of one folder read together (kept decoded, RGB, until formatted): 4 GiB of pixels.
MAX_FOLDER_PIXELS = (4 * GiB) // 3
# Hand-written text files: params.yaml and labels CSVs.
MAX_PARAMS_BYTES = 1 * MiB
MAX_LABELS_BYTES = 64 * MiB
# Values a params file may expand to, counting each use of a YAML alias (a "billion laughs" file is small).
MAX_YAML_VALUES = 100_000

# What torch.load(weights_only=True) raises on damaged bytes besides pickle.UnpicklingError (found by
# tests/test_fuzz.py): a bad record, or a storage that does not fit its tensor (RuntimeError), a stack that runs out
# (IndexError), a memo entry that is not there (KeyError), an object where a storage should be (AttributeError).
TORCH_LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError)

ARRAY_KINDS = "biufcUS"  # numbers, booleans and strings: nothing that needs unpickling or has no size


def check_file_size(path: Path, limit: int) -> None:
    """ValueError when `path` is larger than `limit` bytes (FileNotFoundError when it is missing)."""
    size = path.stat().st_size
    if size > limit:
        raise ValueError(f"{size:,} bytes, over the limit of {limit:,} for this kind of file")


def read_yaml(path: Path, *, limit: int = MAX_PARAMS_BYTES, max_values: int = MAX_YAML_VALUES) -> Any:
    """A hand-written YAML file (params.yaml) parsed with PyYAML's safe loader, refused when the file is over
    `limit` bytes, nests deeper than the parser's recursion allows, or expands through its aliases to more than
    `max_values` values. FileNotFoundError when it is missing; yaml.YAMLError when it is not YAML; ValueError with
    the reason for anything else (not UTF-8 text: UnicodeDecodeError)."""
    check_file_size(path, limit)
    text = path.read_text(encoding="utf-8")
    try:
        value = yaml.safe_load(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if expanded_size(value, max_values) > max_values:
        raise ValueError(f"its YAML aliases expand it to more than {max_values:,} values")
    return value


def expanded_size(value: Any, limit: int) -> int:
    """How many values `value` holds, counting a value shared through YAML aliases at each place it is used, as
    validation would visit it; counting stops past `limit`, so an exponential "billion laughs" costs no more."""
    count, pending = 0, [value]
    while pending and count <= limit:
        item = pending.pop()
        count += 1
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return count


def zip_members(archive: zipfile.ZipFile, *, limit: int) -> list[zipfile.ZipInfo]:
    """The members of an open zip archive, refused when their declared sizes add up to more than `limit`.
    Python's zipfile never inflates a member past its declared size, so this bounds what reading them makes."""
    members = archive.infolist()
    declared = sum(member.file_size for member in members)
    if declared > limit:
        raise ValueError(f"its members declare {declared:,} bytes, over the limit of {limit:,}")
    return members


def read_npz(path: Path, *, limit: int = MAX_ARCHIVE_BYTES) -> dict[str, np.ndarray]:
    """Every array of an .npz file (as np.savez writes it) by name, plain data only (no pickles), each array's
    declared shape checked against the bytes its member holds before the array is allocated.
    FileNotFoundError when the file is missing; ValueError with the reason for anything else."""
    try:
        with zipfile.ZipFile(path) as archive:
            arrays = {}
            for member in zip_members(archive, limit=limit):
                if not member.filename.endswith(".npy"):
                    raise ValueError(f"member {member.filename!r} is not a .npy array")
                with archive.open(member) as stream:
                    arrays[member.filename.removesuffix(".npy")] = _read_npy(stream, member)
            return arrays
    except FileNotFoundError:
        raise
    # what a damaged archive raises: a bad header or CRC, a broken deflate stream, an unknown compression method,
    # an encrypted member (RuntimeError), a member shorter than its header says
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, NotImplementedError,
            RuntimeError) as exc:
        raise ValueError(f"corrupt or truncated ({exc})") from None


def _read_npy(stream: zipfile.ZipExtFile, member: zipfile.ZipInfo) -> np.ndarray:
    name = member.filename
    version = np.lib.format.read_magic(stream)  # ValueError for anything but the .npy magic
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"{name}: .npy format version {version} is not supported")
    try:
        shape, fortran_order, dtype = readers[version](stream)
    # numpy parses the header (a Python literal) with ast and, for old files, tokenize: a damaged one raises either
    except (SyntaxError, tokenize.TokenError) as exc:
        raise ValueError(f"{name}: unreadable array header ({exc})") from None
    if dtype.kind not in ARRAY_KINDS or dtype.itemsize == 0 or dtype.fields is not None:
        raise ValueError(f"{name}: arrays of {dtype} are refused (numbers and strings only, no pickled objects)")
    if any(side < 0 for side in shape):
        raise ValueError(f"{name}: negative shape {shape}")
    count = math.prod(shape)
    size = count * dtype.itemsize
    if size > member.file_size:
        raise ValueError(f"{name}: its header declares {shape} of {dtype} ({size:,} bytes) but the member holds "
                         f"{member.file_size:,} bytes")
    buffer = bytearray(size)
    if stream.readinto(buffer) != size:
        raise ValueError(f"{name}: truncated array data")
    array = np.frombuffer(buffer, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran_order else "C")


def decompress_lzma(data: bytes, *, limit: int) -> bytes:
    """One LZMA/XZ stream decoded, refused as soon as its output passes `limit` bytes (a decompression bomb:
    10 KB decode to 64 MiB) or its decoder needs more than MAX_LZMA_MEMORY, or when anything follows it. Decoded
    a block at a time, so refusing a bomb allocates at most `limit` plus the block being decoded."""
    decoder = lzma.LZMADecompressor(memlimit=MAX_LZMA_MEMORY)
    blocks, total, pending = [], 0, data
    try:
        while not decoder.eof:
            block = decoder.decompress(pending, max_length=LZMA_BLOCK)
            pending = b""
            total += len(block)
            if total > limit:
                raise ValueError(f"decompresses to more than the limit of {limit:,} bytes")
            blocks.append(block)
            if not block and decoder.needs_input:
                raise ValueError("truncated compressed data")
    except lzma.LZMAError as exc:
        raise ValueError(f"corrupt compressed data ({exc})") from None
    if decoder.unused_data:
        raise ValueError(f"{len(decoder.unused_data):,} bytes follow the compressed data")
    return b"".join(blocks)


def read_image(path: Path, *, max_pixels: int = MAX_IMAGE_PIXELS, formats: Sequence[str] | None = None) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3): see decode_image."""
    check_file_size(path, MAX_IMAGE_FILE_BYTES)
    return decode_image(path.read_bytes(), max_pixels=max_pixels, formats=formats)


def decode_image(content: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS,
                 formats: Sequence[str] | None = None, keep_gray: bool = False) -> np.ndarray:
    """An encoded image (a file's bytes) as RGB uint8 (H, W, 3), or as gray (H, W, 1) when `keep_gray` and the
    file is 8-bit gray (spares the three-channel copy and its mixing back to one), its size read from the header
    and checked against `max_pixels` before it is decoded; ValueError with the reason when it is not a readable
    image of `formats` (PIL's names, e.g. PNG, JPEG; None: any PIL reads)."""
    from PIL import Image

    # decoded from memory: PIL reads a chunk's declared length in one call, and a file's read() allocates that
    # much before it finds the file shorter (tests/test_fuzz.py found a PNG claiming a 1.5 GB chunk)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is lower than PIL's
            opened = Image.open(io.BytesIO(content), formats=list(formats) if formats else None)
        with opened as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(f"{width} x {height} pixels, over the limit of {max_pixels:,}")
            if keep_gray and image.mode == "L":
                return np.asarray(image)[..., None]
            return np.asarray(image.convert("RGB"))
    except MemoryError:
        raise  # the limits above should make this impossible: never report it as a bad file
    except ValueError:
        raise
    # PIL's decoders fail on damaged files with many types (UnidentifiedImageError, OSError, SyntaxError,
    # struct.error, zlib.error, EOFError, IndexError, DecompressionBombError, ...): to a reader of untrusted files
    # each means the same, a file that is not a readable image
    except Exception as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from None


def read_images(paths: Sequence[Path], *, formats: Sequence[str] | None = None,
                max_total_pixels: int = MAX_FOLDER_PIXELS) -> list[np.ndarray]:
    """Image files read one by one (see read_image), refused once their pixels together pass
    `max_total_pixels`; ValueError naming the file that could not be used."""
    images, total = [], 0
    for path in paths:
        try:
            image = read_image(path, formats=formats)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        total += image.shape[0] * image.shape[1]
        if total > max_total_pixels:
            raise ValueError(f"{path}: the images up to this one hold {total:,} pixels, over the limit of "
                             f"{max_total_pixels:,} for one folder")
        images.append(image)
    return images
