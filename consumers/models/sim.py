"""``sim:<ms>ms/<batch>[:<dim>]``: a stand-in accelerator, for measuring the pipeline.

``IMAGESTREAM_CLIP__MODEL=sim:40ms/32`` (about an H100 running ViT-B/32 in fp16) makes
``forward`` wait 40 ms per 32 images (linearly: 20 ms for 16) in a sleep, which uses no
CPU, as a GPU call leaves the host's cores free. Everything around it is real: fetch,
decode, CLIP's 224-pixel preprocessing, Kafka, Milvus, publishing. So a CPU-only machine
can show how many consumer processes, and how many cores, it takes to feed one GPU.

Vectors are deterministic unit rows of ``dim`` (default 512) seeded from a sample of
each image's pixels: the same image gives the same vector, different images differ.
Texts (text-to-image search) get vectors seeded from their bytes.
"""

from __future__ import annotations

import re
import time
import zlib

import numpy as np
import torch
from PIL import Image

from consumers.models.encoder import Encoder, Vectors
from consumers.models.pixels import Levels, PixelSpec
from consumers.pipeline.item_errors import ModelLoadError

PREFIX = "sim:"
_SPEC = re.compile(r"^sim:(?P<ms>\d+(?:\.\d+)?)ms/(?P<batch>\d+)(?::(?P<dim>\d+))?$")
# CLIP's preprocessing (openai/clip-vit-base-patch32): the CPU work a real model needs.
_CLIP_MEAN = np.asarray([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
_CLIP_STD = np.asarray([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


class SimEncoder(Encoder):
    name = "sim"
    seconds_per_image = 0.0

    def load(self) -> None:
        match = _SPEC.match(self.task_settings.model)
        if match is None:
            raise ModelLoadError(
                f"cannot load simulated model {self.task_settings.model!r}: "
                "expected sim:<ms>ms/<batch>[:<dim>], e.g. sim:40ms/32"
            )
        self.seconds_per_image = float(match["ms"]) / 1000 / int(match["batch"])
        self.dim = int(match["dim"] or 512)
        self.model_name = self.task_settings.model
        self.min_input_side = 224
        self._pixels = PixelSpec(
            shortest_edge=224,
            resize_to=None,
            resample=Image.Resampling.BICUBIC,
            crop=(224, 224),
            levels=Levels.of(1 / 255, _CLIP_MEAN, _CLIP_STD),
        )

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._pixels(image)

    @property
    def parallel_forward(self) -> bool:
        return False  # one call per batch, as on a GPU

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds_per_image * len(batch))
        # A sparse sample of each image seeds its vector: cheap, and tells images apart.
        samples = batch[:, :, ::16, ::16].contiguous().numpy()
        return torch.from_numpy(np.stack([self._unit(row.tobytes()) for row in samples]))

    def encode_texts(self, texts: list[str]) -> Vectors:
        return self.encode_texts_with_truncation(texts)[0]

    def encode_texts_with_truncation(self, texts: list[str]) -> tuple[Vectors, list[bool]]:
        rows = [self._unit(text.encode("utf-8", "surrogatepass")) for text in texts]
        vectors = np.stack(rows) if rows else np.empty((0, self.dim), dtype=np.float32)
        return vectors, [False] * len(texts)

    def _unit(self, data: bytes) -> Vectors:
        vector = np.random.default_rng(zlib.crc32(data)).standard_normal(self.dim)
        return (vector / np.linalg.norm(vector)).astype(np.float32)
