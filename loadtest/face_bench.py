"""Face throughput, detection and batched recognition measured apart.

    python -m loadtest.face_bench [--images 48] [--batches 1 8 32 64] [--faces 128]

Detection (with alignment and the model's input preparation) is the CPU step the
consumer runs per image in its decode pool; it is timed on that pool's thread count and
on one thread. Recognition is the one batched model call per micro-batch, timed at
several batch sizes over the faces detection found. Images are scikit-image's sample
photos plus a composed photo with two faces, already decoded (decode is not counted).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter

import numpy as np
import torch
from PIL import Image

from consumers.config.settings import FaceSettings, Settings
from consumers.models.face.recognition import FaceCrop, FaceEncoder
from consumers.pipeline.decode import decode_image

PHOTOS = ("astronaut", "camera", "coffee", "two_faces")
# Where the faces of the sample photos are: the astronaut looks at the camera, the
# cameraman is turned to the side (only the profile cascade finds him).
ASTRONAUT_FACE = (120, 10, 330, 220)
CAMERAMAN_FACE = (120, 40, 340, 260)


def sample_photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled sample photos (``two_faces``: the composed one)."""
    import skimage.data

    return two_face_photo() if name == "two_faces" else np.asarray(getattr(skimage.data, name)())


def two_face_photo(pad: int = 20, side: int = 210) -> np.ndarray:
    """The astronaut's and the cameraman's faces side by side on a grey background."""
    first = Image.fromarray(sample_photo("astronaut")).crop(ASTRONAUT_FACE)
    second = Image.fromarray(sample_photo("camera")).convert("RGB").crop(CAMERAMAN_FACE)
    canvas = Image.new("RGB", (2 * side + 3 * pad, side + 2 * pad), (200, 200, 200))
    canvas.paste(first.resize((side, side)), (pad, pad))
    canvas.paste(second.resize((side, side)), (side + 2 * pad, pad))
    return np.asarray(canvas)


def sample_images(settings: Settings, count: int) -> list[Image.Image]:
    """``count`` decoded images cycling through PHOTOS, as the decode pool produces them."""
    decoded = []
    for name in PHOTOS:
        buffer = io.BytesIO()
        Image.fromarray(sample_photo(name)).convert("RGB").save(buffer, "JPEG", quality=90)
        decoded.append(decode_image(buffer.getvalue(), settings.decode))
    return [decoded[i % len(decoded)] for i in range(count)]


def time_detection(
    encoder: FaceEncoder, images: Sequence[Image.Image], threads: int
) -> tuple[list[list[FaceCrop]], float]:
    """Every image's faces and the seconds it took on ``threads`` threads."""
    encoder.detect(images[0])  # warm-up: lazy allocations inside OpenCV
    start = perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        faces = list(pool.map(encoder.detect, images))
    return faces, perf_counter() - start


def time_recognition(
    encoder: FaceEncoder, crops: list[torch.Tensor], batch: int, faces: int
) -> float:
    """Faces per second of ``encode_faces`` at ``batch`` faces per call (crops cycled),
    over about ``faces`` faces and at least two calls."""
    calls = max(2, faces // batch)
    chunk = [crops[i % len(crops)] for i in range(batch)]
    encoder.encode_faces(chunk)  # warm-up
    start = perf_counter()
    for _ in range(calls):
        encoder.encode_faces(chunk)
    return batch * calls / (perf_counter() - start)


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> dict[str, float]:
    settings = Settings(
        face=FaceSettings(model=args.model, device=args.device, profile_faces=not args.no_profile),
    )
    encoder = FaceEncoder(settings.face, settings)
    encoder.load()
    images = sample_images(settings, args.images)
    out(
        f"model {encoder.model_name} (dim {encoder.dim}) on {encoder.device}, detector "
        f"{settings.face.detector} (profile pass {'on' if settings.face.profile_faces else 'off'})"
        f", torch threads {torch.get_num_threads()}, {len(images)} images of {PHOTOS}"
    )
    figures: dict[str, float] = {}
    for threads in sorted({1, settings.decode.threads}):
        faces, seconds = time_detection(encoder, images, threads)
        found = sum(map(len, faces))
        figures[f"detect_faces_per_s_{threads}t"] = found / seconds
        out(
            f"detection   {threads} thread(s): {found / seconds:7.1f} faces/s "
            f"({len(images) / seconds:.1f} images/s, {found} faces)"
        )
    crops = [crop.pixels for image_faces in faces for crop in image_faces]
    for batch in args.batches:
        rate = time_recognition(encoder, crops, batch, args.faces)
        figures[f"recognize_faces_per_s_b{batch}"] = rate
        out(f"recognition batch {batch:4d}:   {rate:7.1f} faces/s")
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.face_bench", description=__doc__)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--faces", type=int, default=128, help="timed faces per batch size")
    parser.add_argument("--model", default="random:GhostFaceNet")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-profile", action="store_true", help="frontal cascade only")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
