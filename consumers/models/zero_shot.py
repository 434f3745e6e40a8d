"""Zero-shot labels over named label sets (seed 001's ``/wearable``, and any set in settings).

Each label is embedded once per process through the CLIP text tower (``prompt`` filled in
with the label) and cached; an image is then scored against a set with one matrix
product. Scores are CLIP's zero-shot probabilities: a softmax over the set of the cosine
similarities times CLIP's logit scale, so they sum to 1 over the whole set and say how a
label compares with the others in the set, not how present it is in absolute terms.

The gateway's ``POST /v1/labels`` and a ``labels`` task in the stream share this module:
build one ``LabelSets`` per encoder and call ``top_k`` from the encoder's device thread.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumers.config.settings import ZeroShotSettings
from schemas.events import Label

Vectors = NDArray[np.float32]  # as consumers.models.encoder (not imported: it pulls torch)
# CLIP's learned temperature converges to (and is clipped at) 100.
LOGIT_SCALE = 100.0


class UnknownLabelSet(KeyError):
    """A label set that is not in ``zero_shot.label_sets``."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.message = f"no label set named {name!r} (known: {', '.join(sorted(known))})"

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, eq=False)
class LabelSet:
    name: str
    labels: list[str]
    prompts: list[str]
    vectors: Vectors  # (len(labels), dim), L2-normalised

    @classmethod
    def build(
        cls,
        name: str,
        labels: list[str],
        prompt: str,
        encode_texts: Callable[[list[str]], Vectors],
    ) -> LabelSet:
        prompts = [prompt.format(label) for label in labels]
        return cls(name, list(labels), prompts, encode_texts(prompts))

    def scores(self, image_vectors: Vectors) -> Vectors:
        """(images, labels) zero-shot probabilities; each row sums to 1."""
        logits = LOGIT_SCALE * (np.asarray(image_vectors, dtype=np.float32) @ self.vectors.T)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probabilities: Vectors = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        return probabilities

    def top_k(self, image_vectors: Vectors, k: int) -> list[list[Label]]:
        """The ``k`` most probable labels per image, best first."""
        k = min(k, len(self.labels))
        ranked = []
        for row in self.scores(image_vectors):
            best = np.argsort(-row, kind="stable")[:k]
            ranked.append([Label(label=self.labels[i], score=float(row[i])) for i in best])
        return ranked


class LabelSets:
    """The configured label sets of one encoder, each embedded on first use."""

    def __init__(
        self, settings: ZeroShotSettings, encode_texts: Callable[[list[str]], Vectors]
    ) -> None:
        self.settings = settings
        self._encode_texts = encode_texts
        self._built: dict[str, LabelSet] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(self.settings.label_sets)

    def get(self, name: str | None = None) -> LabelSet:
        """Blocking the first time a set is used (it runs the text encoder)."""
        name = name or self.settings.default_set
        labels = self.settings.label_sets.get(name)
        if not labels:
            raise UnknownLabelSet(name, self.names())
        with self._lock:
            if name not in self._built:
                prompt = self.settings.prompt
                self._built[name] = LabelSet.build(name, labels, prompt, self._encode_texts)
            return self._built[name]

    def top_k(
        self, image_vectors: Vectors, name: str | None = None, k: int | None = None
    ) -> list[list[Label]]:
        return self.get(name).top_k(image_vectors, k or self.settings.top_k)


# Per loaded model (the encoder itself when it has no bundle): label configuration -> sets.
_SHARED: weakref.WeakKeyDictionary[Any, dict[str, LabelSets]] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def shared_label_sets(
    settings: ZeroShotSettings,
    encoder: Any,
    encode_texts: Callable[[list[str]], Vectors] | None = None,
) -> LabelSets:
    """The process's one ``LabelSets`` for this loaded CLIP model and label configuration.

    ``encoder`` is a loaded ``ClipEncoder`` (duck-typed: importing it pulls torch) and
    ``encode_texts`` defaults to its ``encode_texts``. The ``labels`` task and the
    gateway's ``/v1/labels`` (``rpc.py``) share the cache, so each label set's text
    embeddings are computed once per process between them.
    """
    model = getattr(getattr(encoder, "bundle", None), "model", None)
    if model is None:
        model = encoder
    config = settings.model_dump_json()
    with _SHARED_LOCK:
        by_config = _SHARED.setdefault(model, {})
        if config not in by_config:
            by_config[config] = LabelSets(settings, encode_texts or encoder.encode_texts)
        return by_config[config]
