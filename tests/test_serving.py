"""The served classifier's request handling: what a client may send, how each image becomes the input contract,
and what is refused. The model behind it is exercised over real HTTP in test_pipeline and test_registry."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from groundwork.data.canvas import IMAGE_SIDE, to_source_format
from groundwork.params import Params
from groundwork.project import ROOT
from groundwork.serving.classifier import RequestError, request_images, softmax, to_model_input


def png(image: np.ndarray, format: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format)
    return base64.b64encode(buffer.getvalue()).decode()


def a_stroke(side: int = 64) -> np.ndarray:
    """A vertical bar of light ink on black, off centre: a crude 1."""
    image = np.zeros((side, side), np.uint8)
    image[side // 8:side // 2, side // 10:side // 10 + side // 16] = 255
    return image


def test_ingested_images_reach_the_model_exactly_as_in_training(tiny_data: dict) -> None:
    with np.load(tiny_data["target"]) as stored:
        images = stored["test_images"]
    prepared = to_model_input(request_images(images), size=20, color="luminance")
    assert prepared.shape == (len(images), 1, IMAGE_SIDE, IMAGE_SIDE) and prepared.dtype == np.float32
    assert np.array_equal(prepared[:, 0], images / np.float32(255.0))  # the uint8 levels training saw
    as_floats = request_images((images / 255.0).astype(np.float32))  # 0..1 floats: the same images
    assert np.array_equal(to_model_input(as_floats, size=20, color="luminance"), prepared)


@pytest.mark.parametrize("shape", [(28, 28), (3, 28, 28), (3, 28, 28, 1), (3, 28, 28, 3), (3, 1, 28, 28)])
def test_every_array_layout_gives_gray_images(shape: tuple[int, ...]) -> None:
    array = np.full(shape, 128, np.uint8)
    images = request_images(array)
    assert len(images) == (1 if len(shape) == 2 else 3)
    assert all(image.shape == (28, 28) and np.allclose(image, 128 / 255) for image in images)


def test_a_tall_image_is_one_image_not_a_batch_of_rows() -> None:
    assert len(request_images(np.zeros((5000, 3)))) == 1  # more rows than a request may hold images


def test_values_are_read_by_their_range() -> None:
    [unit] = request_images(np.array([[0.0, 0.5], [1.0, 0.25]]))
    assert np.allclose(unit, [[0.0, 0.5], [1.0, 0.25]])  # 0..1: as they are
    [byte] = request_images(np.array([[0, 51], [255, 102]]))
    assert np.allclose(byte, [[0.0, 0.2], [1.0, 0.4]])  # up to 255: 8-bit values
    [wide] = request_images(np.array([[-1.0, 0.0], [3.0, 1.0]]))
    assert np.allclose(wide, [[0.0, 0.25], [1.0, 0.5]])  # anything else: stretched over its own range
    [flat] = request_images(np.full((2, 2), 1000.0))
    assert not flat.any()


def test_a_photographed_digit_is_inverted_cropped_fitted_and_centred() -> None:
    stroke = a_stroke()
    light, dark = (to_model_input(request_images([png(image)]), size=20, color="luminance")[0, 0]
                   for image in (stroke, 255 - stroke))
    assert np.array_equal(light, dark), "dark ink on white is read as light ink on black"
    rows, columns = np.nonzero(light > 0.1)
    assert rows.max() - rows.min() + 1 == 20, "the ink's longer side fills `size`, whatever the file's size"
    assert abs((rows.min() + rows.max()) / 2 - 13.5) <= 1 and abs((columns.min() + columns.max()) / 2 - 13.5) <= 1
    crop = stroke[8:32, 6:10] / np.float32(255.0)
    expected = to_source_format(crop[None], max_value=1.0, size=20) / np.float32(255.0)
    assert np.array_equal(light, expected[0]), "the crop goes through ingest's own function"


def test_files_and_tables_of_files_are_read() -> None:
    stroke = a_stroke()
    for request in ([png(stroke)], [png(stroke, "JPEG")], {"image": [png(stroke)]},
                    __import__("pandas").DataFrame({"image": [png(stroke)]}), [base64.b64decode(png(stroke))]):
        [image] = request_images(request)
        assert image.shape == stroke.shape and image.max() > 0.9


@pytest.mark.parametrize(("request_body", "reason"), [
    ([], "no images in the request"),
    (np.zeros((0, 28, 28)), "no images in the request"),
    (np.array(["a", "b"]), "image 0: a string must be a base64-encoded PNG or JPEG file"),
    (np.array([["a", "b"], ["c", "d"]]), "image 0: not an array of numbers nor a base64-encoded file"),
    (np.zeros((2, 5, 5, 7)), "expected (N, H, W, 1 or 3) or (N, 1, H, W)"),
    (np.zeros((1, 1, 1, 2, 2)), "expected (H, W), (N, H, W)"),
    (np.array([[np.nan, 0.0]]), "values must be finite numbers"),
    (np.array([[True, False]]), "images must be numbers or base64-encoded files, got bool values"),
    ([base64.b64encode(b"\x89PNG\r\n\x1a\n broken").decode()], "not a readable image"),
    ([base64.b64encode(b"GIF89a").decode()], "not a readable image"),
    ({"pixels": [1]}, "needs an 'image' column"),
    ([[[1.0, 2.0]], "abc"], "image 1: a string must be a base64-encoded"),
    ([np.zeros((2, 2)), np.full((2, 2), np.inf)], "image 1: values must be finite numbers"),
    ([[1.0, 2.0]], "image 0: shape [2], expected (H, W) or (H, W, C)"),
    ([{"a": 1}], "image 0: not an array of numbers"),
    ([np.zeros((2, 2))] * 4097, "4097 images in one request, over the limit of 4096"),
    (np.zeros((4097, 2, 2)), "4097 images in one request, over the limit of 4096"),
])
def test_a_request_it_cannot_read_is_refused_with_the_reason(request_body: object, reason: str) -> None:
    with pytest.raises(RequestError) as refused:
        request_images(request_body)
    assert reason in str(refused.value)


def test_probabilities_sum_to_one_and_keep_the_logits_order() -> None:
    logits = np.array([[1000.0, 0.0, -5.0], [0.1, 0.2, 0.3]])
    probabilities = softmax(logits)
    assert np.allclose(probabilities.sum(axis=1), 1.0) and np.isfinite(probabilities).all()
    assert (probabilities.argmax(axis=1) == logits.argmax(axis=1)).all()


@settings(max_examples=300, deadline=5000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.binary(max_size=2048) | st.text(max_size=64))
def test_any_string_or_bytes_is_read_or_refused_with_a_reason(payload: bytes | str) -> None:
    """Fuzzed: random bytes, their base64 and random text either give images or a RequestError, nothing else."""
    for item in (payload, base64.b64encode(payload).decode() if isinstance(payload, bytes) else payload):
        try:
            images = request_images([item])
        except RequestError as refused:
            assert str(refused).startswith("image 0: ")
        else:
            assert len(images) == 1 and images[0].ndim == 2


def test_a_stage_drops_mlflows_type_hint_warning_and_logs_other_warnings() -> None:
    """MLflow's "Add type hints to the `predict` method" (said once per stage in every run's log) is dropped by
    the stage's logging, by name (groundwork.entrypoint.SILENCED_WARNINGS); any other warning is a WARNING line."""
    script = ("import warnings; from groundwork.entrypoint import configure_logging; configure_logging(); "
              "import groundwork.serving.classifier; warnings.warn('another warning')")
    shown = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "Add type hints" not in shown.stderr
    assert "WARNING py.warnings" in shown.stderr and "UserWarning: another warning" in shown.stderr, shown.stderr


def test_the_capture_writes_each_full_batch_whole_with_its_answers_and_the_loop_reads_it(tmp_path: Path,
                                                                                         tiny_params: Params) -> None:
    """Requests held until batch_size images, then one .npz the loop's reader takes as an arrived batch: the
    images as the model took them, with its classes and confidences; nothing half-written is ever visible."""
    from groundwork.adaptive.incoming import read_arrivals
    from groundwork.serving.capture import RequestCapture

    rng = np.random.default_rng(0)
    capture = RequestCapture(tmp_path / "incoming", batch_size=5)
    images = rng.integers(0, 256, (7, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    probabilities = softmax(rng.normal(size=(7, 10)))
    assert capture.add(images[:3], probabilities[:3]) is None and not (tmp_path / "incoming").exists()
    written = capture.add(images[3:], probabilities[3:])
    assert written is not None and [p.name for p in (tmp_path / "incoming").iterdir()] == [written.name]
    with np.load(written) as batch:
        assert np.array_equal(batch["images"], images) and batch["predicted"].tolist() == probabilities.argmax(
            1).tolist()
        assert np.allclose(batch["confidence"], probabilities.max(1))
    [arrived] = read_arrivals(tmp_path / "incoming", tiny_params.ingest.target, min_batch=5).batches
    assert np.array_equal(arrived.images, images), "the loop reads the served images unchanged"
    assert capture.add(images[:2], probabilities[:2]) is None, "the next batch starts empty"
