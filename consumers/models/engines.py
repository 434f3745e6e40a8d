"""Exported inference engines for a model's towers: ONNX Runtime and OpenVINO on a CPU.

``IMAGESTREAM_<TASK>__ENGINE=onnx|openvino`` runs a tower (CLIP's image and text towers,
DINOv2) through a graph exported once from the loaded torch module and cached under
``<model_cache_dir>/exports/``, in a folder named by the model, the tower, the engine,
the precision and the versions that produced it (so an upgrade re-exports instead of
loading a stale graph). The encoders keep their torch preprocessing and postprocessing;
only ``forward`` changes.

Precisions (``IMAGESTREAM_<TASK>__PRECISION``):

- ``fp32``: the graph as exported.
- ``bf16``: torch runs under CPU autocast; OpenVINO compiles the fp32 graph with
  ``INFERENCE_PRECISION_HINT=bf16``, which needs a CPU with AVX512-BF16 or AMX (elsewhere
  OpenVINO keeps f32 and says so in ``EngineTower.precision``). ONNX Runtime's CPU kernels
  have no bf16 path: refused.
- ``int8``: ONNX Runtime's dynamic quantization (int8 weights, activations quantized per
  call, no calibration data), run by ONNX Runtime or read by OpenVINO. torch: refused.

Why OpenVINO compiles with ``PERFORMANCE_HINT=LATENCY``: one stream spread over every
core per call, which is how the consumer calls it (one batch at a time); THROUGHPUT's
several streams only pay off with several calls in flight.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from consumers.config.task_settings import check_supported
from consumers.models.encoder import Encoder
from consumers.models.model_cache import build_atomically
from consumers.pipeline.item_errors import ModelLoadError

Engine = Literal["torch", "onnx", "openvino"]
Precision = Literal["fp32", "bf16", "int8"]
OPSET = 17
_LOCK = threading.Lock()
_LOADED: dict[tuple[Path, str], EngineTower] = {}  # shared by every encoder of the process


@dataclass(frozen=True)
class TowerSpec:
    """One tower to export: ``module`` maps the named inputs to one feature tensor.

    ``example`` holds real inputs of the shape the encoder feeds (batch of two, so the
    batch axis is traced as variable); ``dynamic`` names the variable axes per input.
    """

    source: str  # the loaded checkpoint: hub id or folder
    tower: str  # "image" or "text"
    module: torch.nn.Module
    example: Mapping[str, torch.Tensor]
    dynamic: Mapping[str, Mapping[int, str]]


def library_versions(engine: str) -> str:
    """What an export depends on besides the weights: exporter, model code, runtime."""
    import transformers

    versions = [f"torch{torch.__version__}", f"tf{transformers.__version__}"]
    if engine == "openvino":
        import openvino

        versions.append(f"ov{openvino.__version__}")
    else:
        import onnxruntime

        versions.append(f"ort{onnxruntime.__version__}")
    return "-".join(versions)


def export_dir(cache_dir: Path, spec: TowerSpec, engine: str, precision: str) -> Path:
    """``<cache>/exports/<model>-<tower>-<engine>-<weights>-<hash>``; the hash covers the
    checkpoint's identity (path, config and weight files' sizes and times) and versions.
    ``<weights>`` is int8 or fp32: bf16 is a compile-time hint on the fp32 graph."""
    weights = "int8" if precision == "int8" else "fp32"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.source.rstrip("/").split("/")[-1])[-60:]
    digest = hashlib.sha256(
        "|".join([_checkpoint_identity(spec.source), library_versions(engine)]).encode()
    ).hexdigest()[:16]
    return cache_dir / "exports" / f"{name}-{spec.tower}-{engine}-{weights}-{digest}"


def _checkpoint_identity(source: str) -> str:
    folder = Path(source)
    if not folder.is_dir():
        return source  # a hub id: its cached revision is what from_pretrained loaded
    stats = [
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix in (".json", ".safetensors", ".bin")
    ]
    return "|".join([str(folder.resolve()), *stats])


class EngineTower:
    """A compiled tower: ``__call__`` takes numpy inputs by name, returns float32 rows.

    Thread-safe: ONNX Runtime sessions are; OpenVINO gets one infer request per thread.
    """

    def __init__(self, engine: str, precision: str, runner: Any, effective: str) -> None:
        self.engine = engine
        self.requested = precision
        self.precision = effective  # what the runtime actually computes in
        self._runner = runner
        self._local = threading.local()

    def __call__(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float32]:
        if self.engine == "onnx":
            out = self._runner.run(None, dict(inputs))[0]
        else:
            request = getattr(self._local, "request", None)
            if request is None:
                request = self._local.request = self._runner.create_infer_request()
            out = request.infer(dict(inputs))[0]
        return np.asarray(out, dtype=np.float32)


def engine_tower(spec: TowerSpec, engine: str, precision: str, cache_dir: Path) -> EngineTower:
    """Export ``spec`` once (cached on disk), compile it, share it within the process."""
    check_supported(engine, precision)
    folder = export_dir(cache_dir, spec, engine, precision)
    with _LOCK:
        key = (folder, precision)
        if key not in _LOADED:
            if not folder.is_dir():
                build_atomically(folder, partial(_export, spec, engine, precision))
            _LOADED[key] = _compile(folder, engine, precision)
        return _LOADED[key]


def _graph_file(engine: str) -> str:
    return "model.onnx" if engine == "onnx" else "model.xml"


def _export(spec: TowerSpec, engine: str, precision: str, folder: Path) -> None:
    """torch.onnx for both engines, then int8 and/or OpenVINO's IR. OpenVINO reads ONNX:
    its own converter from the torch module (``openvino.convert_model``) gave no faster
    graph in a trial here and took several times longer to convert."""
    onnx_file = folder / "model.onnx"
    _torch_to_onnx(spec, onnx_file)
    if precision == "int8":
        _quantize(onnx_file)
    if engine == "openvino":
        import openvino

        model = openvino.Core().read_model(onnx_file)
        # compress_to_fp16 would store fp16 weights: keep the exported weights exactly.
        openvino.save_model(model, folder / "model.xml", compress_to_fp16=False)
        onnx_file.unlink()


def _quantize(onnx_file: Path) -> None:
    """int8 weights in place by ONNX Runtime's dynamic quantization. (Its recommended
    pre-processing, symbolic shape inference, took over a minute on ViT-B/32 here.)"""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_file = onnx_file.with_name("fp32.onnx")
    onnx_file.rename(fp32_file)
    root = logging.getLogger()
    quiet = _DropQuantizerChatter()
    root.addFilter(quiet)  # it logs a line per tensor through the root logger
    try:
        quantize_dynamic(fp32_file, onnx_file, weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(quiet)
        fp32_file.unlink()


class _DropQuantizerChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname


def _torch_to_onnx(spec: TowerSpec, path: Path) -> None:
    names = list(spec.example)
    # The TorchScript exporter (deprecated since torch 2.9, hence its warning): the
    # torch.export-based one needs onnxscript and is slower on these towers. Its tracer
    # warnings name shape checks that hold for every input the encoder feeds (fixed image
    # size; token length is exported as a variable axis and tested at several lengths).
    # CLIP's text pooling indexes with arange and argmax, never negative indices, which
    # is what the advanced-indexing warning is about.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
        torch.onnx.export(
            spec.module,
            tuple(spec.example[name] for name in names),
            str(path),
            input_names=names,
            output_names=["features"],
            dynamic_axes={k: dict(v) for k, v in spec.dynamic.items()},
            opset_version=OPSET,
            dynamo=False,
        )


def _compile(folder: Path, engine: str, precision: str) -> EngineTower:
    path = folder / _graph_file(engine)
    if engine == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        return EngineTower(engine, precision, session, precision)
    import openvino

    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision != "int8":
        config["INFERENCE_PRECISION_HINT"] = "bf16" if precision == "bf16" else "f32"
    compiled = openvino.Core().compile_model(str(path), "CPU", config)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
    effective = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(hint.get_type_name(), "?")
    return EngineTower(engine, precision, compiled, "int8" if precision == "int8" else effective)


def encoder_tower(encoder: Encoder, spec: TowerSpec) -> EngineTower:
    """The encoder's exported ``spec`` in its engine and precision (a CPU-only path)."""
    if encoder.device.type != "cpu":
        raise ModelLoadError(
            f"engine {encoder.engine} runs on the CPU; {encoder.name} is on {encoder.device} "
            "(use engine torch there)"
        )
    return engine_tower(spec, encoder.engine, encoder.precision, encoder.settings.model_cache_dir)


def example_pixels(encoder: Encoder) -> torch.Tensor:
    """Two preprocessed images, the input shape the encoder's forward receives."""
    from PIL import Image

    side = max(encoder.min_input_side or 224, 32)
    image = Image.new("RGB", (side + side // 3, side), (120, 90, 60))
    return torch.stack([encoder.preprocess(image)] * 2)
