"""``random:<preset>`` model specs: random-weight models for tests and benchmarks.

A preset is built once from a config with a fixed seed, saved with ``save_pretrained``
under the model cache and then loaded like any other folder (``consumers/models/weights.py``),
so tests and benchmarks exercise the same ``from_pretrained`` path as production. Every
preset is named here, per model family, in one table.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from consumers.models.face.deepface_env import TORCH_MODELS
from consumers.models.model_cache import build_atomically
from consumers.models.presets.chat import tiny_idefics3, tiny_llava_next
from consumers.models.presets.deepface import random_home
from consumers.models.presets.tokenizer import tower
from consumers.models.presets.towers import PresetBuilder, blip_preset, clip_preset, dinov2_preset

SEED = 20240531
# Seeding uses torch's global generator: two builds in one process must not interleave.
_BUILD_LOCK = threading.Lock()

PRESETS: dict[str, dict[str, PresetBuilder]] = {
    "clip": {
        "tiny": clip_preset(
            text=tower(32, 2, 2, vocab_size=1024, max_position_embeddings=32),
            vision=tower(32, 2, 2, image_size=32, patch_size=8),
            projection_dim=32,
            tokenizer_vocab=1024,
        ),
        # The architectures of openai/clip-vit-base-patch32 and openai/clip-vit-large-patch14.
        "vit-b-32": clip_preset(
            text=tower(512, 12, 8, vocab_size=49408, max_position_embeddings=77),
            vision=tower(768, 12, 12, image_size=224, patch_size=32),
            projection_dim=512,
            tokenizer_vocab=8192,
        ),
        "vit-l-14": clip_preset(
            text=tower(768, 12, 12, vocab_size=49408, max_position_embeddings=77),
            vision=tower(1024, 24, 16, image_size=224, patch_size=14),
            projection_dim=768,
            tokenizer_vocab=8192,
        ),
    },
    "dinov2": {
        "tiny": dinov2_preset(32, 2, 2, 8, 32, 32, 32),
        # The architecture and preprocessing of facebook/dinov2-small.
        "small": dinov2_preset(384, 12, 6, 14, 518, 256, 224),
    },
    "caption": {
        "tiny": blip_preset(
            text=tower(32, 2, 2, vocab_size=512, max_position_embeddings=64),
            vision=tower(32, 2, 2, patch_size=8),
            side=32,
            tokenizer_vocab=512,
        ),
        # The architecture of Salesforce/blip-image-captioning-base (its vocabulary size aside).
        "blip-base": blip_preset(
            text=tower(768, 12, 12, vocab_size=30524, max_position_embeddings=512),
            vision=tower(768, 12, 12, patch_size=16),
            side=384,
            tokenizer_vocab=8192,
        ),
        "tiny-idefics3": tiny_idefics3,
        "tiny-llava-next": tiny_llava_next,
    },
    "deepface": {name: random_home(name) for name in TORCH_MODELS},
}


def presets(family: str) -> list[str]:
    return sorted(PRESETS.get(family, {}))


@contextmanager
def seeded(seed: int = SEED) -> Iterator[None]:
    """Fixed weights in every process, without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def random_model_dir(family: str, preset: str, cache_dir: Path) -> Path:
    """Build ``random:<preset>`` once (atomically) and return its folder."""
    builder = PRESETS.get(family, {}).get(preset)
    if builder is None:
        known = ", ".join(presets(family)) or "none"
        raise LookupError(f"unknown random preset {preset!r} (known: {known})")
    return build_once(builder, cache_dir / f"random-{family}-{preset}")


def build_once(builder: PresetBuilder, final: Path) -> Path:
    """``final``, built by ``builder`` under the fixed seed unless it exists already."""
    with _BUILD_LOCK:
        if not final.is_dir():
            build_atomically(final, partial(_seeded_build, builder))
    return final


def _seeded_build(builder: PresetBuilder, folder: Path) -> None:
    with seeded():
        builder(folder)
