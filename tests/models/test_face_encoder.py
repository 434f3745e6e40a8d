"""The face encoder on its own: detection on sample photos, batched recognition, weights."""

from __future__ import annotations

import copy
import io
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from consumers.config.settings import DecodeSettings, FaceSettings, Settings
from consumers.models.face.recognition import FaceEncoder
from consumers.pipeline.decode import SOURCE_SIZE, decode_image
from consumers.pipeline.item_errors import ModelLoadError
from loadtest import face_bench
from tests.face_support import face_model_cache, random_deepface_home, two_face_photo
from tests.helpers import jpeg, sample_jpeg


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return face_model_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def home(cache: Path) -> Path:
    return random_deepface_home(cache)


def _encoder(cache: Path, **face: object) -> FaceEncoder:
    settings = Settings(
        _env_file=None,
        face=FaceSettings.model_validate({"device": "cpu", **face}),
        decode=DecodeSettings(threads=2),
        model_cache_dir=cache,
    )
    return FaceEncoder(settings.face, settings)


@pytest.fixture(scope="module")
def encoder(home: Path, cache: Path) -> FaceEncoder:
    loaded = _encoder(cache, model="GhostFaceNet", deepface_home=home)
    loaded.load()
    return loaded


def _decoded(pixels: np.ndarray, max_side: int = 1024) -> Image.Image:
    return decode_image(jpeg(pixels), DecodeSettings(max_side=max_side))


@pytest.mark.parametrize(
    ("name", "has_face"), [("astronaut", True), ("camera", True), ("coffee", False)]
)
def test_sample_photos(encoder: FaceEncoder, name: str, has_face: bool) -> None:
    image = decode_image(sample_jpeg(name), DecodeSettings())
    crops = encoder.detect(image)
    assert bool(crops) is has_face
    for crop in crops:
        x, y, w, h = crop.bbox
        assert min(w, h) > 20
        assert min(x, y) >= 0
        assert x + w <= image.width
        assert y + h <= image.height
        assert 0 < crop.confidence <= 1
        assert tuple(crop.pixels.shape) == (3, 112, 112)


def test_the_turned_head_of_the_cameraman_needs_the_profile_cascade(
    home: Path, cache: Path
) -> None:
    frontal_only = _encoder(cache, model="GhostFaceNet", deepface_home=home, profile_faces=False)
    frontal_only.load()
    assert frontal_only.detect(decode_image(sample_jpeg("camera"), DecodeSettings())) == []


def test_two_faces_side_by_side_are_two_faces_largest_first(encoder: FaceEncoder) -> None:
    crops = encoder.detect(_decoded(two_face_photo()))
    assert len(crops) == 2
    areas = [c.bbox[2] * c.bbox[3] for c in crops]
    assert areas == sorted(areas, reverse=True)
    lefts = sorted(c.bbox[0] for c in crops)
    assert lefts[0] < 250 <= lefts[1]  # one face in each half


def test_boxes_are_in_the_submitted_image_pixels_when_decoding_shrinks_it(
    encoder: FaceEncoder,
) -> None:
    pixels = np.asarray(skimage.data.astronaut())
    big = np.asarray(Image.fromarray(pixels).resize((1024, 1024)))
    full = encoder.detect(_decoded(big, max_side=1024))[0]  # the largest face
    small = _decoded(big, max_side=512)
    assert small.size == (512, 512)
    assert small.info[SOURCE_SIZE] == (1024, 1024)
    shrunk = encoder.detect(small)[0]
    assert np.allclose(shrunk.bbox, full.bbox, atol=12), (shrunk.bbox, full.bbox)


def test_source_size_follows_the_exif_rotation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated by 90 degrees
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 20, 30)).save(buffer, format="JPEG", exif=exif)
    image = decode_image(buffer.getvalue(), DecodeSettings(max_side=100))
    assert image.info[SOURCE_SIZE] == (200, 300)
    assert image.size == (67, 100)


def test_one_batched_call_equals_one_call_per_face(encoder: FaceEncoder) -> None:
    crops = [
        crop
        for name in ("astronaut", "camera")
        for crop in encoder.detect(decode_image(sample_jpeg(name), DecodeSettings()))
    ]
    batched = encoder.encode_faces([c.pixels for c in crops] * 2)
    alone = np.concatenate([encoder.encode_faces([c.pixels]) for c in crops])
    assert batched.shape == (2 * len(crops), encoder.dim) == (2 * len(crops), 512)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert np.allclose(batched[: len(crops)], alone, atol=1e-4)
    assert np.allclose(batched[: len(crops)], batched[len(crops) :], atol=1e-6)
    assert float(batched[0] @ batched[1]) < 0.9  # different faces, far apart
    assert encoder.encode_faces([]).shape == (0, 512)


def test_only_a_torch_face_model_is_split_over_cpu_workers(encoder: FaceEncoder) -> None:
    assert encoder.parallel_forward
    assert (encoder.cpu_workers() is None) == (torch.get_num_threads() < 2)
    native = copy.copy(encoder)  # as if DeepFace had loaded OpenCV's SFace
    native._client = SimpleNamespace(model=object(), input_shape=(112, 112), output_shape=128)
    assert not native.parallel_forward
    assert native.cpu_workers() is None


def test_missing_weights_stop_the_start_with_one_line_naming_file_and_folder(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as raised:
        _encoder(tmp_path, model="GhostFaceNet", deepface_home=tmp_path).load()
    message = str(raised.value)
    assert "\n" not in message
    assert "ghostfacenet_v1.pth" in message
    assert str(tmp_path / ".deepface" / "weights") in message
    assert "IMAGESTREAM_FACE__DEEPFACE_HOME" in message
    assert time.monotonic() - started < 10  # looked up, not downloaded


def test_the_detector_files_are_checked_at_start_too(home: Path, cache: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        _encoder(cache, model="GhostFaceNet", deepface_home=home, detector="yunet").load()
    assert "face_detection_yunet_2023mar.onnx is missing" in str(raised.value)
    assert str(home / ".deepface" / "weights") in str(raised.value)


def test_unknown_model_is_one_line_too(tmp_path: Path, home: Path) -> None:
    with pytest.raises(ModelLoadError, match="NoSuchNet") as raised:
        _encoder(tmp_path, model="NoSuchNet", deepface_home=home).load()
    assert "\n" not in str(raised.value)


def test_the_fallback_loads_random_weights_when_the_model_has_none(
    tmp_path: Path, cache: Path, home: Path
) -> None:
    encoder = _encoder(
        cache, model="GhostFaceNet", deepface_home=tmp_path, fallback_model="random:GhostFaceNet"
    )
    encoder.load()
    assert (encoder.model_name, encoder.dim) == ("random:GhostFaceNet", 512)
    assert home == cache / "random-deepface-GhostFaceNet"  # built once, in the model cache
    assert not (tmp_path / ".deepface" / "weights" / "ghostfacenet_v1.pth").exists()


def test_the_benchmark_prints_detection_and_recognition_rates_apart(
    cache: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGESTREAM_MODEL_CACHE_DIR", str(cache))  # the random build of `home`
    monkeypatch.setenv("IMAGESTREAM_DECODE__THREADS", "2")
    assert (
        face_bench.main(["--images", "4", "--batches", "2", "--faces", "4", "--device", "cpu"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    detection = [line for line in lines if line.startswith("detection")]
    assert len(detection) == 2  # one thread, and the decode pool's two
    assert all("faces/s" in line and "4 faces" in line for line in detection)
    (recognition,) = [line for line in lines if line.startswith("recognition batch")]
    assert float(recognition.split()[-2]) > 0
