"""What a task adds to the generic image pipeline.

The pipeline (``consumers/pipeline/batch.py``) owns everything tasks share: parsing, S3
reads, decoding, timings, error results. A task owns three steps, each run where it
belongs: ``prepare`` (CPU, one image, in the decode thread pool), ``infer`` (one
batched call on the device thread) and ``store`` (Milvus writes and searches on the
store thread), which fills each job's result fields.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from PIL import Image

from consumers.config.settings import Settings
from consumers.models.encoder import Encoder
from consumers.pipeline.results import Stopwatch
from consumers.vectorstore.keys import strip_tenant, vector_id
from consumers.vectorstore.store import VectorStore
from consumers.vectorstore.text_store import TextStore
from schemas.events import ImageSubmitted, TaskResult
from schemas.people import PersonChanged

__all__ = ["ImageTask", "Job", "stamp", "strip_tenant", "vector_id"]

Prepared = TypeVar("Prepared")
Output = TypeVar("Output")
E = TypeVar("E", bound=Encoder)


@dataclass
class Job(Generic[Prepared]):
    """One event's journey through a batch."""

    index: int
    event: ImageSubmitted
    watch: Stopwatch
    data: bytes | None = None  # fetched, not yet decoded
    prepared: Prepared | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # TaskResult fields: neighbors, ...

    @property
    def tenant(self) -> str:
        return self.event.collection or ""


class ImageTask(ABC, Generic[Prepared, Output]):
    name: ClassVar[str]
    # False for tasks that only score vectors (labels, classify): no collection is opened.
    needs_store: ClassVar[bool] = True
    # Whether ``infer``'s model work is ``encoder.encode_images`` (plus light work after).
    infers_by_encode_images: ClassVar[bool] = True

    def __init__(self, encoder: Encoder, store: VectorStore | None) -> None:
        self.encoder = encoder
        self._store = store
        # Set by the service where ``text_collection`` names one
        # (consumers/vectorstore/text_store.py).
        self.text_store: TextStore | None = None

    @classmethod
    def text_collection(cls, settings: Settings) -> str | None:
        """The Milvus text collection this task writes for text search (OCR text,
        captions) or reads (classify: OCR text), or None."""
        return None

    @property
    def texts(self) -> TextStore:
        if self.text_store is None:
            raise RuntimeError(f"the {self.name} task was built without a text store")
        return self.text_store

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            raise RuntimeError(f"the {self.name} task was built without a vector store")
        return self._store

    def encoder_as(self, kind: type[E]) -> E:
        """The encoder, as the ``kind`` this task needs (``TypeError`` when it is not)."""
        if not isinstance(self.encoder, kind):
            raise TypeError(f"the {self.name} task needs a {kind.__name__}, not {self.encoder!r}")
        return self.encoder

    @property
    def model_name(self) -> str:
        return self.encoder.model_name

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def infers_on_cpu_workers(self) -> bool:
        """Whether ``infer`` hands its model work to the CPU workers and waits for them:
        then a second batch's ``infer`` may start before the first's ends, and queue behind
        it there (``consumers/models/cpu_workers.py``)."""
        return self.infers_by_encode_images and self.encoder.cpu_workers() is not None

    @abstractmethod
    def prepare(self, image: Image.Image) -> Prepared:
        """CPU work on one decoded image; thread-safe."""

    @abstractmethod
    def infer(self, prepared: list[Prepared]) -> list[Output]:
        """One batched device call; one output per prepared item."""

    @abstractmethod
    def store_and_search(self, jobs: list[Job[Prepared]], outputs: list[Output]) -> None:
        """Write to Milvus, search, set each job's result ``fields``; stamp index/search."""

    def people_events(self, results: Sequence[TaskResult]) -> list[PersonChanged]:
        """Events for ``people.v1`` that these results' images caused (the face task's),
        published with the results, before their offsets are committed."""
        return []

    def close(self) -> None:
        """Release what the task opened itself (the service closes the vector store)."""


def stamp(jobs: list[Job[Any]], stage: str, millis: float) -> None:
    """A batched stage's time counts for every job of the batch."""
    for job in jobs:
        job.watch.add(stage, millis)
