"""GPU encoder + JPEG decode benchmark; runs standalone on a CUDA machine.

Needs only torch and transformers (numpy comes with them); torchvision, when present,
adds batched GPU JPEG decoding (``torchvision.io.decode_jpeg(..., device="cuda")``);
Pillow, when present, adds the CPU-decode path. No imagestream import, so the file can
be copied to a GPU box alone (then ``--no-e2e``). One command, about 8 minutes on an
H100, one JSON file::

    python loadtest/gpu_bench.py --out .imagestream/gpu-bench.json

``--dry-run`` runs every step on the CPU with the tiny preset in seconds, to check the
script and the JSON's shape where no GPU is.

Random weights of the CLIP vision towers of openai/clip-vit-base-patch32 and
clip-vit-large-patch14 (throughput does not depend on the weights). Reports images/s
for: ``encode`` (preprocessed tensors already on the GPU), ``gpu_decode+encode`` (JPEG
bytes in pinned host memory -> nvJPEG -> resize/crop/normalise on the GPU -> model) and
``cpu_decode+encode`` (Pillow decode + resize in a thread pool into pinned memory,
non-blocking copy, normalise on the GPU; the next batch decodes while this one encodes).
Then ``e2e``: ``imagestream loadtest`` on the GPU through the embedded stack (broker, S3
server, milvus-lite, one consumer process), when imagestream is installed, within what
is left of ``--budget-s``; its steady images/s, efficiency and p99 go into the JSON.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

SIDE, WIDTH, HEIGHT = 224, 640, 480
MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image normalisation
STD = (0.26862954, 0.26130258, 0.27577711)
PRESETS = {  # hidden, layers, heads, patch, projection: the CLIP vision towers
    "tiny": (32, 2, 2, 8, 32),
    "vit-b-32": (768, 12, 12, 32, 512),
    "vit-l-14": (1024, 24, 16, 14, 768),
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def build_model(preset: str, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    hidden, layers, heads, patch, projection = PRESETS[preset]
    config = CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, patch_size=patch, image_size=SIDE, projection_dim=projection,
    )  # fmt: skip
    model: Any = CLIPVisionModelWithProjection(config)
    return model.to(device, dtype).eval()


def synthetic_jpegs(count: int, quality: int = 90) -> list[bytes]:
    """Photo-like 640x480 frames (gradient, boxes, mild noise), JPEG-encoded; empty
    when neither torchvision nor Pillow is installed."""
    tv_io, pil = _optional("torchvision.io"), _optional("PIL.Image")
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        ramp = torch.linspace(0, 1, WIDTH).expand(HEIGHT, WIDTH)
        colours = torch.rand(2, 3, 1, 1, generator=generator) * 255
        frame = colours[0] + (colours[1] - colours[0]) * ramp
        for _ in range(8):
            y, x = (int(v) for v in torch.randint(0, HEIGHT - 60, (2,), generator=generator))
            frame[:, y : y + 120, x : x + 160] = torch.rand(3, 1, 1, generator=generator) * 255
        frame += torch.randn(frame.shape, generator=generator) * 7
        pixels = frame.clamp(0, 255).to(torch.uint8)
        if tv_io is not None:
            out.append(bytes(tv_io.encode_jpeg(pixels, quality=quality).numpy().tobytes()))
        elif pil is not None:
            buffer = io.BytesIO()
            pil.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
            out.append(buffer.getvalue())
        else:
            return []  # no JPEG codec: only the encode-only figure
    return out


def normalise(batch_uint8: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (B, 3, H, W) on the device -> short side 224, centre crop, CLIP-normalised."""
    images = batch_uint8.float()
    h, w = images.shape[-2:]
    scale = SIDE / min(h, w)
    size = (max(SIDE, round(h * scale)), max(SIDE, round(w * scale)))
    images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - SIDE) // 2, (size[1] - SIDE) // 2
    images = images[:, :, top : top + SIDE, left : left + SIDE] / 255
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return ((images - mean) / std).to(dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[int], object], batches: int, device: torch.device) -> float:
    """Seconds for ``batches`` steps after two warm-up steps."""
    for i in range(2):
        step(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(batches):
        step(i)
    _sync(device)
    return time.perf_counter() - start


def gpu_decode_step(
    model: Any, jpegs: list[torch.Tensor], batch: int, device: torch.device, dtype: torch.dtype
) -> Callable[[int], object] | None:
    tv_io = _optional("torchvision.io")
    if tv_io is None or device.type != "cuda" or not jpegs:
        return None

    def step(i: int) -> object:
        chunk = [jpegs[(i * batch + k) % len(jpegs)] for k in range(batch)]
        decoded = torch.stack(tv_io.decode_jpeg(chunk, device=device))
        with torch.inference_mode():
            return model(pixel_values=normalise(decoded, dtype)).image_embeds

    return step


def cpu_decode_step(
    model: Any, jpegs: list[bytes], batch: int, device: torch.device, dtype: torch.dtype,
    threads: int,
) -> Callable[[int], object] | None:  # fmt: skip
    pil = _optional("PIL.Image")
    if pil is None or not jpegs:
        return None
    import numpy as np

    pool = ThreadPoolExecutor(threads)
    pinned = device.type == "cuda"

    def load(data: bytes) -> Any:
        image = pil.open(io.BytesIO(data))
        image.draft("RGB", (SIDE * 2, SIDE * 2))  # JPEG DCT scaling: decode at >= 2x 224
        image = image.convert("RGB").resize((SIDE * WIDTH // HEIGHT, SIDE), pil.BILINEAR)
        return np.asarray(image)

    def decode(i: int) -> torch.Tensor:
        arrays = list(pool.map(load, [jpegs[(i * batch + k) % len(jpegs)] for k in range(batch)]))
        host = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return host.contiguous().pin_memory() if pinned else host.contiguous()

    ahead = [pool.submit(decode, 0)]

    def step(i: int) -> object:
        host = ahead.pop().result()
        ahead.append(pool.submit(decode, i + 1))  # overlaps this batch's GPU work
        on_device = host.to(device, non_blocking=True)
        with torch.inference_mode():
            return model(pixel_values=normalise(on_device, dtype)).image_embeds

    return step


def bench_model(preset: str, args: argparse.Namespace) -> dict[str, Any]:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model = build_model(preset, device, dtype)
    jpegs = synthetic_jpegs(args.distinct)
    pixels = normalise(torch.randint(0, 256, (args.batch, 3, HEIGHT, WIDTH), device=device), dtype)

    def encode(_: int) -> object:
        with torch.inference_mode():
            return model(pixel_values=pixels).image_embeds

    # nvJPEG reads the compressed bytes from host memory: pinned, the copy is DMA.
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs]
    if device.type == "cuda":
        tensors = [t.pin_memory() for t in tensors]
    steps = {
        "encode": encode,
        "gpu_decode+encode": gpu_decode_step(model, tensors, args.batch, device, dtype),
        "cpu_decode+encode": cpu_decode_step(model, jpegs, args.batch, device, dtype, args.threads),
    }
    result: dict[str, Any] = {"model": preset, "dtype": args.dtype, "batch": args.batch}
    for name, step in steps.items():
        if step is not None:
            seconds = timed(step, args.batches, device)
            result[f"{name} images/s"] = round(args.batch * args.batches / seconds, 1)
    return result


def e2e(args: argparse.Namespace, seconds_left: float) -> dict[str, Any]:
    """``imagestream loadtest`` as a child process, bounded by ``seconds_left``."""
    command = shutil.which("imagestream")
    base = [command] if command else [sys.executable, "-m", "consumers.cli"]
    if not command and _optional("consumers.cli") is None:
        return {"skipped": "imagestream is not installed here (copy the repo and its venv)"}
    out = Path(args.out).parent / "gpu-bench-e2e"
    tiny = args.dry_run
    argv = [
        "loadtest", "--device", args.device, "--out", str(out), "--legacy-iterations", "0",
        "--model", "random:tiny" if tiny else "random:vit-b-32",
        "--batch", str(args.batch), "-n", str(args.e2e_images), "--rounds", "2",
        "--latency-seconds", "0" if tiny else "20", "--bare-batches", "1" if tiny else "5",
        "--timeout", str(max(30, int(seconds_left))),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            [*base, *argv], check=False, timeout=seconds_left, capture_output=True, text=True
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"did not finish within the {seconds_left:.0f} s left"}
    report_file = out / "report.json"
    if done.returncode not in (0, 1) or not report_file.exists():
        return {"failed": done.returncode, "stderr_tail": done.stderr[-2000:]}
    verdicts = json.loads(report_file.read_text())["verdicts"]
    keep = ("e2e_images_per_s", "bare_images_per_s", "efficiency", "latency")
    return {key: verdicts.get(key) for key in keep} | {"report": str(report_file)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vit-b-32", "vit-l-14"], choices=PRESETS)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per mode")
    parser.add_argument("--dtype", choices=DTYPES, default="fp16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--distinct", type=int, default=256, help="distinct JPEGs cycled")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 4, help="CPU decoders")
    parser.add_argument("--out", default=".imagestream/gpu-bench.json", help="the one JSON")
    parser.add_argument("--budget-s", type=float, default=480, help="whole run, e2e included")
    parser.add_argument("--e2e", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--e2e-images", type=int, default=8192, help="per saturation round")
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny preset: checks the script and JSON"
    )
    return parser


def _dry_run(args: argparse.Namespace) -> None:
    args.models, args.device, args.dtype = ["tiny"], "cpu", "fp32"
    args.batch, args.batches, args.distinct, args.threads = 4, 1, 4, 2
    args.e2e_images = 16


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = _parser().parse_args(argv)
    if args.dry_run:
        _dry_run(args)
    torch.backends.cuda.matmul.allow_tf32 = True
    environment = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "torchvision": getattr(_optional("torchvision"), "__version__", None),
        "dry_run": args.dry_run,
    }
    print(json.dumps(environment), flush=True)
    result: dict[str, Any] = {"environment": environment, "models": []}
    for preset in args.models:
        result["models"].append(bench_model(preset, args))
        print(json.dumps(result["models"][-1]), flush=True)
    if args.e2e:
        result["e2e"] = e2e(args, args.budget_s - (time.perf_counter() - started))
        print(json.dumps({"e2e": result["e2e"]}), flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
