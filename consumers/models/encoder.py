"""The encoder contract (which encoder serves a task: ``consumers/models/registry.py``).

An encoder is loaded lazily (``load``), turns a decoded RGB image into a CPU tensor
(``preprocess``, safe to call from many threads), runs one batched call on its device
(``forward``: from the device thread, or on a CPU from several worker threads at once,
one shard of the batch each, unless ``parallel_forward`` is false) and returns float32
rows (``postprocess``). Keeping the stages separate lets the pipeline decode and preprocess
in a thread pool while the device works on the previous batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from consumers.config.settings import Settings, TaskSettings
from consumers.config.task_settings import EngineSettings
from consumers.models.cpu_workers import CpuWorkers, cpu_workers

Vectors = NDArray[np.float32]


def collate(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)``, copied by this thread alone (numpy's copy).

    ``torch.stack`` spreads a batch-sized copy (19 MB for 32 CLIP inputs) over torch's
    OpenMP threads, whose workers spin at the barrier afterwards: on the device thread of
    an accelerator (or ``sim:``), where the copy is the only CPU work, that cost 27 ms of
    CPU per batch of 32 on the 2-core box, against 2.3 ms for one thread's copy
    (docs/performance.md, the scale-out section). Tensors numpy cannot hold as they are
    (bf16, another device, unequal shapes) take ``torch.stack``'s path and its errors.
    """
    if not _numpy_stackable(tensors):
        return torch.stack(list(tensors))
    first = tensors[0]
    out = np.empty((len(tensors), *first.shape), dtype=first.numpy().dtype)
    for row, tensor in zip(out, tensors, strict=True):
        row[...] = tensor.numpy()
    return torch.from_numpy(out)


def _numpy_stackable(tensors: Sequence[torch.Tensor]) -> bool:
    if not tensors:
        return False
    first = tensors[0]
    return all(
        t.device.type == "cpu"
        and t.dtype == first.dtype
        and t.shape == first.shape
        and not t.requires_grad
        and t.dtype in _NUMPY_DTYPES
        for t in tensors
    )


_NUMPY_DTYPES = (torch.float32, torch.float16, torch.float64, torch.uint8, torch.int64)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(device: torch.device, precision: str = "fp32") -> torch.dtype:
    """fp16 on CUDA (bf16 if asked), fp32 weights on CPU: CPU bf16 runs under autocast,
    which keeps fp32 where bf16 kernels would lose precision or speed."""
    if device.type == "cuda":
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.float32


class Encoder(ABC):
    name: ClassVar[str]

    def __init__(self, task: TaskSettings, settings: Settings) -> None:
        self.task_settings = task
        self.settings = settings
        self.device = pick_device(task.device)
        # torch, or an exported graph (consumers/models/engines.py), and its precision.
        self.engine = task.engine if isinstance(task, EngineSettings) else "torch"
        self.precision = task.precision if isinstance(task, EngineSettings) else "fp32"
        self.dtype = pick_dtype(self.device, self.precision)
        self.model_name: str = task.model
        self.dim: int = 0
        # The shortest image side ``preprocess`` needs (None = any): decoders may shrink
        # larger images to it before preprocessing, which saves most of the decode time.
        self.min_input_side: int | None = None

    @abstractmethod
    def load(self) -> None:
        """Load weights; set ``model_name`` (what actually loaded) and ``dim``."""

    @abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB image to one CPU tensor; thread-safe."""

    @abstractmethod
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """One batched call on the device."""

    def postprocess(self, output: torch.Tensor) -> Vectors:
        """L2-normalised float32 rows on the CPU."""
        out = torch.nn.functional.normalize(output.float(), dim=-1)
        return out.cpu().numpy().astype(np.float32, copy=False)

    def encode_images(self, tensors: Sequence[torch.Tensor]) -> Vectors:
        """Collate, forward and postprocess; blocking (run it in a thread). On a CPU the
        batch is split over single-threaded workers (``consumers/models/cpu_workers.py``)."""
        workers = self.cpu_workers()
        # One image runs here, on torch's threads: at low load, the fastest answer.
        if workers is None or len(tensors) < 2:
            return self._encode(tensors)
        return np.concatenate(workers.map(self._encode, tensors))

    @property
    def parallel_forward(self) -> bool:
        """Whether a CPU batch is split over single-threaded workers: a torch module's
        is; an exported engine spreads one call over every core itself."""
        return self.engine == "torch"

    def autocast(self) -> AbstractContextManager[object]:
        """torch's CPU bf16 autocast where ``precision`` asks for it, else nothing."""
        if self.engine == "torch" and self.precision == "bf16" and self.device.type == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def cpu_workers(self) -> CpuWorkers | None:
        """The workers a CPU batch is split over; None on an accelerator, or where
        ``forward`` must not run in several threads at once."""
        if not self.parallel_forward:
            return None
        return cpu_workers(self.device, self.settings.cpu_workers)

    def _encode(self, tensors: Sequence[torch.Tensor]) -> Vectors:
        with torch.inference_mode():
            return self.postprocess(self.forward(collate(tensors)))
