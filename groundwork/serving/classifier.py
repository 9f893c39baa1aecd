"""The served digit classifier: an MLflow pyfunc model around an ONNX file that takes what a client has (image
arrays of any size and range, or encoded PNG / JPEG files, base64 in JSON), brings each image to the input
contract with the function ingest uses (`groundwork.data.canvas.to_source_format`), and answers each image's
class and class probabilities.

Imports numpy, pandas, PIL, ONNX Runtime and MLflow only: the environment a logged copy declares, no torch.

What a request may hold, and how each image becomes the contract:
- numbers: one image (H, W), a batch of gray images (N, H, W), or a batch (N, H, W, C) with C of 1 or 3 (RGB,
  mixed by luminance), or (N, 1, H, W) as the ONNX file takes it. Values 0..1 are taken as they are, values up to
  255 as 8-bit ones; anything else (negative values, larger ones) is stretched over the image's own range.
- strings (or bytes): each a PNG or JPEG file, base64-encoded in JSON.
- a DataFrame or a mapping with an `image` column holding either.
Then, image by image: dark ink on a light background (the border brighter than mid-grey) is inverted to light
ink on black. An image of exactly 28x28 is taken as already laid out on the canvas. Any other is cropped to its
ink and fitted as ingest fits the target's digits: the longer side to the model's `size`, centred on 28x28.
A request the model cannot read is refused with an MlflowException naming the image and the reason, which
MLflow's scoring server answers with HTTP 400.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from groundwork.data.canvas import IMAGE_SIDE, to_gray, to_source_format
from groundwork.data.untrusted import MAX_IMAGE_PIXELS, decode_image
from groundwork.serving.capture import capture_from_environment

IMAGE_COLUMN = "image"
MAX_IMAGES = 4096  # per request: bounds the server's memory for one call (a batch of 256 is the usual)
INK_THRESHOLD = 0.1  # share of full brightness a pixel needs to count as ink when cropping
ONNX_ARTIFACT = "onnx"


class RequestError(ValueError):
    """A request the model cannot read; the message says which image and why."""


def _refused(reason: str) -> MlflowException:
    return MlflowException(f"bad request: {reason}", error_code=INVALID_PARAMETER_VALUE)


def _decoded(item: Any, index: int) -> np.ndarray:
    """One encoded image (base64 text or raw bytes) as gray float32 0..1 (H, W)."""
    if isinstance(item, str):
        try:
            item = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"image {index}: a string must be a base64-encoded PNG or JPEG file") from None
    try:
        pixels = decode_image(bytes(item), formats=("PNG", "JPEG"), keep_gray=True)
    except ValueError as exc:
        raise RequestError(f"image {index}: {exc}") from None
    return to_gray(pixels.astype(np.float32), "luminance") / np.float32(255.0)


def _scaled(image: np.ndarray, index: int) -> np.ndarray:
    """Numbers as gray float32 0..1: 0..1 kept, up to 255 as 8-bit values, any other range stretched."""
    if image.size == 0:
        raise RequestError(f"image {index}: no pixels")
    if not np.isfinite(image).all():
        raise RequestError(f"image {index}: values must be finite numbers")
    low, high = float(image.min()), float(image.max())
    if low >= 0.0 and high <= 1.0:
        return image.astype(np.float32)
    if low >= 0.0 and high <= 255.0:
        return (image / 255.0).astype(np.float32)
    if high == low:
        return np.zeros(image.shape, np.float32)
    return ((image - low) / (high - low)).astype(np.float32)


def _numeric_images(array: np.ndarray, first: int = 0) -> list[np.ndarray]:
    """A numeric array as gray images (H, W), by the shapes the module docstring lists; `first` numbers the
    images in messages."""
    if array.dtype.kind not in "uif":
        raise RequestError(f"images must be numbers or base64-encoded files, got {array.dtype} values")
    _counted(1 if array.ndim == 2 else len(array))
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 4 and array.shape[1] == 1 and array.shape[-1] != 1:
        array = array[:, 0]
    elif array.ndim == 4:
        if array.shape[-1] not in (1, 3):
            raise RequestError(f"a batch of shape {list(array.shape)}: expected (N, H, W, 1 or 3) or (N, 1, H, W)")
        array = to_gray(array.astype(np.float32), "luminance")
    elif array.ndim != 3:
        raise RequestError(f"an array of shape {list(array.shape)}: expected (H, W), (N, H, W), (N, H, W, C) "
                           "or (N, 1, H, W)")
    if array.shape[1] * array.shape[2] > MAX_IMAGE_PIXELS:
        raise RequestError(f"images of {array.shape[1]} x {array.shape[2]} pixels, over the limit of "
                           f"{MAX_IMAGE_PIXELS:,}")
    return [_scaled(image, first + index) for index, image in enumerate(array)]


def _counted(count: int) -> None:
    """RequestError unless a request's image count is within 1..MAX_IMAGES."""
    if count == 0:
        raise RequestError("no images in the request")
    if count > MAX_IMAGES:
        raise RequestError(f"{count} images in one request, over the limit of {MAX_IMAGES}")


def _item_images(item: Any, index: int) -> list[np.ndarray]:
    """One item of a list of images: an encoded file, or an array (H, W) or (H, W, C)."""
    if isinstance(item, str | bytes):
        return [_decoded(item, index)]
    try:
        array = np.asarray(item, dtype=np.float64)
    except (TypeError, ValueError):
        raise RequestError(f"image {index}: not an array of numbers nor a base64-encoded file") from None
    if array.ndim not in (2, 3):
        raise RequestError(f"image {index}: shape {list(array.shape)}, expected (H, W) or (H, W, C)")
    return _numeric_images(array[None] if array.ndim == 3 else array, first=index)


def request_images(model_input: Any) -> list[np.ndarray]:
    """Every image of a request as gray float32 0..1 (H, W); RequestError when there is none, too many, or one is
    unreadable. A numeric array is a batch (the shapes the module docstring lists); anything else is a list whose
    items are images, each a file or an array of its own size."""
    if isinstance(model_input, pd.DataFrame | Mapping):
        if IMAGE_COLUMN not in model_input:
            raise RequestError(f"a table or mapping of images needs an '{IMAGE_COLUMN}' column")
        model_input = model_input[IMAGE_COLUMN]
    if isinstance(model_input, pd.Series):
        model_input = model_input.tolist()
    if isinstance(model_input, str | bytes):
        model_input = [model_input]
    if isinstance(model_input, np.ndarray) and model_input.dtype.kind in "biuf":
        return _numeric_images(model_input)
    items = list(model_input)
    _counted(len(items))  # before decoding any
    return [image for index, item in enumerate(items) for image in _item_images(item, index)]


def _light_on_dark(image: np.ndarray) -> np.ndarray:
    """The image with light ink on a dark background: inverted when its border is brighter than mid-grey."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return 1.0 - image if border.mean() > 0.5 else image


def _ink(image: np.ndarray) -> np.ndarray:
    """The image cropped to the box holding its ink (all of it when nothing passes the threshold)."""
    rows, columns = np.nonzero(image > INK_THRESHOLD)
    if len(rows) == 0:
        return image
    return image[rows.min():rows.max() + 1, columns.min():columns.max() + 1]


def laid_out(images: list[np.ndarray], *, size: int, color: str) -> np.ndarray:
    """Gray 0..1 images in the training data's format: uint8 (N, 28, 28), light ink on black."""
    formatted = np.empty((len(images), IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    for index, image in enumerate(images):
        image = _light_on_dark(image)
        if image.shape == (IMAGE_SIDE, IMAGE_SIDE):
            formatted[index] = np.round(image * 255.0)
        else:
            formatted[index] = to_source_format(_ink(image)[None], max_value=1.0, size=size, color=color)[0]
    return formatted


def as_model_input(formatted: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) images as the ONNX file takes them: float32 (N, 1, 28, 28) in 0..1."""
    return (formatted / np.float32(255.0)).astype(np.float32)[:, None]


def to_model_input(images: list[np.ndarray], *, size: int, color: str) -> np.ndarray:
    """Gray 0..1 images as the ONNX file takes them: float32 (N, 1, 28, 28), on ingest's 8-bit levels."""
    return as_model_input(laid_out(images, size=size, color=color))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise class probabilities of logits."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class DigitClassifier(PythonModel):
    """The pyfunc model: `load_context` opens the ONNX file, `predict` answers a DataFrame with one row per
    image, its `class` and its `probabilities` (one per class, summing to one)."""

    def load_context(self, context: Any) -> None:
        """Open the ONNX file on the CPU and read the contract's settings from the model config."""
        import onnxruntime

        self._session = onnxruntime.InferenceSession(context.artifacts[ONNX_ARTIFACT],
                                                     providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._size = int(context.model_config["size"])
        self._color = str(context.model_config["color"])
        self._capture = capture_from_environment()  # None unless `groundwork serve` turned capture on

    # model_input unannotated: MLflow reads a type hint there as an input schema to enforce (and warns on Any)
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Class and probabilities of every image in the request; MlflowException (HTTP 400) for a bad one."""
        try:
            images = request_images(model_input)
        except RequestError as exc:
            raise _refused(str(exc)) from None
        formatted = laid_out(images, size=self._size, color=self._color)
        probabilities = softmax(self._session.run(None, {self._input: as_model_input(formatted)})[0].astype(np.float64))
        if self._capture is not None:
            self._capture.add(formatted, probabilities)
        return pd.DataFrame({"class": probabilities.argmax(axis=1),
                             "probabilities": [row.tolist() for row in probabilities]})
