"""Model specs: a Hugging Face hub id, a local folder, or ``random:<preset>``.

Every encoder loads through ``load_with_fallback``. A ``random:<preset>`` spec is built
once from a config with a fixed seed, saved with ``save_pretrained`` under the model
cache and then loaded like any other folder, so tests and benchmarks exercise the same
``from_pretrained`` path as production. Encoder modules register their presets per
model family with ``register_preset``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from consumers.config.settings import TaskSettings
from consumers.pipeline.item_errors import ModelLoadError

logger = logging.getLogger("imagestream.models")

RANDOM_PREFIX = "random:"
SEED = 20240531
HUB_PROBE_TIMEOUT_S = 3.0

T = TypeVar("T")
PresetBuilder = Callable[[Path], None]
# (source, local_files_only) -> whatever the encoder needs (model, processor, tokenizer).
Loader = Callable[[str, bool], T]

_PRESETS: dict[str, dict[str, PresetBuilder]] = {}
# Seeding uses torch's global generator: two builds in one process must not interleave.
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelKind:
    """Names used in messages: ``label`` for people, ``task`` for the settings variable."""

    family: str
    task: str
    label: str

    @property
    def env_var(self) -> str:
        return f"IMAGESTREAM_{self.task.upper()}__MODEL"


def register_preset(family: str, name: str) -> Callable[[PresetBuilder], PresetBuilder]:
    """Register a builder that writes a random-weight model folder for ``random:<name>``."""

    def decorator(builder: PresetBuilder) -> PresetBuilder:
        _PRESETS.setdefault(family, {})[name] = builder
        return builder

    return decorator


def presets(family: str) -> list[str]:
    return sorted(_PRESETS.get(family, {}))


@contextmanager
def seeded(seed: int = SEED) -> Iterator[None]:
    """Fixed weights in every process, without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def random_model_dir(family: str, preset: str, cache_dir: Path) -> Path:
    """Build ``random:<preset>`` once (atomically) and return its folder."""
    builder = _PRESETS.get(family, {}).get(preset)
    if builder is None:
        known = ", ".join(presets(family)) or "none"
        raise LookupError(f"unknown random preset {preset!r} (known: {known})")
    final = cache_dir / f"random-{family}-{preset}"
    with _BUILD_LOCK:
        if not final.is_dir():
            _build_atomically(builder, final)
    return final


def _build_atomically(builder: PresetBuilder, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final place so the rename is atomic: a racing process either
    # sees nothing or a complete folder, never a half-written one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        with seeded():
            builder(tmp)
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
        # Another process won the race; its folder holds the same seeded weights.
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def hub_unreachable_reason() -> str | None:
    """Why the hub cannot be used now, or None when it answered.

    huggingface_hub retries a missing file with backoff for ~25 s on network errors;
    one short probe first turns "no internet" into a fast, clear failure.
    """
    from huggingface_hub import constants, get_session

    if constants.is_offline_mode():
        return "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception:
        return (
            f"not in the local Hugging Face cache and the hub ({constants.ENDPOINT}) is unreachable"
        )
    return None


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(text.splitlines()[0].split())


def _is_path_like(spec: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that names a path is a folder.
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec


def _load_spec(spec: str, kind: ModelKind, cache_dir: Path, loader: Loader[T]) -> T:
    """Load one spec; raises LookupError/FileNotFoundError/ConnectionError with a reason."""
    if spec.startswith(RANDOM_PREFIX):
        folder = random_model_dir(kind.family, spec.removeprefix(RANDOM_PREFIX), cache_dir)
        return loader(str(folder), True)
    local = Path(spec).expanduser()
    if local.is_dir():
        return loader(str(local), True)
    if _is_path_like(spec):
        raise FileNotFoundError(f"no such folder {str(local)!r}")
    try:
        return loader(spec, True)
    except Exception as cached_err:
        reason = hub_unreachable_reason()
        if reason is not None:
            raise ConnectionError(reason) from cached_err
    return loader(spec, False)


def load_model(spec: str, kind: ModelKind, cache_dir: Path, loader: Loader[T]) -> T:
    """Load ``spec`` or raise ModelLoadError with one line naming it and how to provide it."""
    try:
        return _load_spec(spec, kind, cache_dir, loader)
    except Exception as err:
        choices = "|".join(presets(kind.family)) or "<preset>"
        raise ModelLoadError(
            f"cannot load {kind.label} model {spec!r}: {_one_line(err)}; set {kind.env_var} "
            f"to a local folder or a reachable hub id, or random:<{choices}> for random weights"
        ) from err


def load_with_fallback(
    task: TaskSettings, kind: ModelKind, cache_dir: Path, loader: Loader[T]
) -> tuple[str, T]:
    """Load ``task.model``, else ``task.fallback_model`` with one warning; return (spec, value)."""
    return with_fallback(task, kind.label, lambda spec: load_model(spec, kind, cache_dir, loader))


def with_fallback(task: TaskSettings, label: str, load: Callable[[str], T]) -> tuple[str, T]:
    """``load(task.model)``; on ModelLoadError ``load(task.fallback_model)`` with one warning."""
    try:
        return task.model, load(task.model)
    except ModelLoadError as err:
        fallback = task.fallback_model
        if not fallback or fallback == task.model:
            raise
        reason = _one_line(err.__cause__ or err)
        logger.warning(
            "%s model %r could not be loaded (%s); using fallback %r",
            label,
            task.model,
            reason,
            fallback,
        )
    return fallback, load(fallback)


def tower(hidden: int, layers: int, heads: int, **extra: int) -> dict[str, int]:
    """Transformer sizes for a preset's config (MLP 4x wide, as in ViT/BERT/CLIP)."""
    sizes = {"hidden_size": hidden, "intermediate_size": 4 * hidden}
    return {**sizes, "num_hidden_layers": layers, "num_attention_heads": heads, **extra}


def build_tokenizer(vocab_size: int, max_length: int) -> Any:
    """A real byte-level BPE tokenizer trained in memory, so no download is needed.

    Byte-level means any text encodes (no unknown tokens). Ids: 0 = bos, 1 = eos,
    2 = pad; eos is deliberately not id 2, which CLIP's text model treats as the
    legacy "pool at the largest id" convention.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    bos, eos, pad = "<|startoftext|>", "<|endoftext|>", "<|pad|>"
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[bos, eos, pad],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.split("\n"), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, 0), (eos, 1)]
    )
    fast_tokenizer: Any = PreTrainedTokenizerFast  # untyped in transformers' stubs
    return fast_tokenizer(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        model_max_length=max_length,
    )


# Caption-like English, enough for a few hundred BPE merges of everyday words.
_CORPUS = """a photo of a cat sitting on a wooden table next to a window
a dog running across the green grass in the park on a sunny day
a close up picture of a red car parked in front of an old house
two people walking along the beach at sunset with the ocean behind them
a bowl of fresh fruit with apples oranges bananas and grapes
a city street at night with bright lights and tall buildings
a small boat floating on a calm blue lake surrounded by mountains
a child playing with a ball in the snow wearing a warm winter coat
a plate of food with rice chicken and vegetables on a white table
an airplane flying high in the clear sky above the clouds
a black and white drawing of a horse standing in a field
a group of friends sitting around a fire in the forest at night
a bicycle leaning against a brick wall on a quiet road
a yellow flower growing between the rocks near the river
a man reading a book on a bench under a large tree
a woman holding an umbrella in the rain on a busy street
a kitchen with a stove a sink and a refrigerator
a bird perched on the branch of a tree in the spring
a train crossing a bridge over a wide river in the evening
a computer keyboard and a mouse on a desk in an office
a painting of a landscape with hills houses and a church
a baby sleeping in a bed with soft blankets and a toy bear
a pizza with cheese tomatoes and olives cut into slices
a soccer player kicking the ball during a game in a stadium
the face of a smiling person looking at the camera
a screenshot of a document with text and a chart
a diagram showing the parts of a machine
a logo on a sign outside a shop in the town centre
a cup of coffee and a piece of cake on a small round table
an old map of the world with blue seas and brown land
photo picture image drawing painting sketch illustration rendering
red orange yellow green blue purple pink brown black white grey gold silver
one two three four five six seven eight nine ten many several few
big small large tiny tall short long wide narrow bright dark light heavy
cat dog horse cow sheep bird fish bear elephant lion tiger monkey
car truck bus train plane boat ship bicycle motorcycle road bridge street
man woman boy girl child baby person people family friend team crowd
house building room door window wall floor roof garden yard kitchen
tree flower grass leaf forest mountain river lake sea beach sky cloud sun
food fruit apple banana orange bread cake pizza coffee tea water milk
"""
