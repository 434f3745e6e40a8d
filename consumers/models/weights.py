"""Model specs: a Hugging Face hub id, a local folder, or ``random:<preset>``.

Every encoder loads through ``load_with_fallback``. A ``random:<preset>`` spec names a
random-weight model that ``consumers/models/presets/`` builds once into a folder of the
model cache; it is then loaded like any other folder, so tests and benchmarks exercise
the same ``from_pretrained`` path as production.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from consumers.config.settings import TaskSettings
from consumers.models.presets import presets, random_model_dir
from consumers.pipeline.item_errors import ModelLoadError

logger = logging.getLogger("imagestream.models")

RANDOM_PREFIX = "random:"
HUB_PROBE_TIMEOUT_S = 3.0

T = TypeVar("T")
# (source, local_files_only) -> whatever the encoder needs (model, processor, tokenizer).
Loader = Callable[[str, bool], T]


@dataclass(frozen=True)
class ModelKind:
    """Names used in messages: ``label`` for people, ``task`` for the settings variable."""

    family: str
    task: str
    label: str

    @property
    def env_var(self) -> str:
        return f"IMAGESTREAM_{self.task.upper()}__MODEL"


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
