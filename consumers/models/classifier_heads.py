"""Classifier heads over stored CLIP vectors (seed 004): train, save without pickle, load.

``imagestream classifier train NAME --labels FILE.csv`` reads ``image_id,label`` rows,
fetches those images' vectors from the CLIP collection, fits a head (logistic regression
by default; ``--method stack`` is seed 004's logistic regression + SVC + naive Bayes
stacked under a random forest), prints the accuracy on a held-out stratified split and
then refits on every labelled image. ``--features clip,ocr`` adds seed 004's OCR branch:
the images' stored OCR text through TF-IDF into naive Bayes, stacked with the vector
models (``consumers/models/head_features.py``). A head is two files in ``classify.heads_dir``:
``NAME.skops`` (the estimator, in skops' format, loaded only when it holds nothing
beyond skops' trusted types and ``EXTRA_TRUSTED``) and ``NAME.json`` (what it was
trained on). Nothing is unpickled.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from consumers.config.settings import Settings
from consumers.models.encoder import Vectors
from consumers.models.head_features import rows, uses_ocr, with_ocr
from consumers.vectorstore.keys import vector_id
from consumers.vectorstore.store import VectorStore, stored_dim
from consumers.vectorstore.text_store import TextStore
from schemas.events import ClassPrediction, utcnow

log = logging.getLogger("imagestream.heads")
Method = Literal["logreg", "stack"]
# Beyond skops' defaults, what the stack's random forest and stacking need to load.
EXTRA_TRUSTED = frozenset({"sklearn.tree._tree.Tree", "sklearn.utils._bunch.Bunch"})
SEED = 0


class HeadError(Exception):
    """Training input or a saved head is unusable; the message says why."""


@dataclass(frozen=True)
class HeadInfo:
    name: str
    method: str
    model: str  # the CLIP model spec the vectors came from (settings.clip.model)
    collection: str
    dim: int
    classes: list[str]
    accuracy: float | None  # on the held-out split; None when too few images for one
    n_train: int
    n_test: int
    trained_at: str
    features: list[str] = field(default_factory=lambda: ["clip"])  # or clip + ocr


def read_labels(path: Path) -> list[tuple[str, str]]:
    """``image_id,label`` rows; a first row ``image_id,label`` is a header."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["image_id", "label"]:
        rows = rows[1:]
    bad = [i for i, row in enumerate(rows, 1) if len(row) < 2 or not row[0] or not row[1]]
    if bad:
        raise HeadError(f"{path}: rows {bad[:5]} are not image_id,label")
    return [(row[0].strip(), row[1].strip()) for row in rows]


def estimator(method: Method, min_class_count: int, ocr_dim: int | None = None) -> Any:
    """The head; with ``ocr_dim`` (the vector width), one that also reads the OCR text."""
    from sklearn.ensemble import RandomForestClassifier, StackingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.svm import SVC

    logreg = LogisticRegression(max_iter=2000)
    folds = min(5, min_class_count)
    forest = RandomForestClassifier(n_estimators=100, random_state=SEED)
    if ocr_dim is not None:
        models = (
            [("logreg", logreg)] if method == "logreg" else [("logreg", logreg), ("svc", SVC())]
        )
        final = LogisticRegression(max_iter=2000) if method == "logreg" else forest
        return with_ocr(models, ocr_dim, final, folds)
    if method == "logreg":
        return logreg
    base = [("logreg", logreg), ("svc", SVC()), ("nb", GaussianNB())]
    return StackingClassifier(base, final_estimator=forest, cv=folds)


def fit(
    vectors: Vectors,
    labels: list[str],
    method: Method,
    test_size: float,
    texts: list[str] | None = None,
) -> tuple[Any, float | None, int]:
    """(head fitted on everything, held-out accuracy or None, held-out count); ``texts``
    (the images' OCR text) adds the OCR branch."""
    from sklearn.model_selection import train_test_split

    counts = Counter(labels)
    if len(counts) < 2 or min(counts.values()) < 2:
        raise HeadError(f"need 2+ classes with 2+ images each, got {dict(counts)}")
    if texts is not None and not any(t.strip() for t in texts):
        raise HeadError("no labelled image has OCR text: run the ocr task on them first")
    ocr_dim = None if texts is None else int(vectors.shape[1])
    x = rows(vectors, texts)
    y = np.asarray(labels)
    n_test = max(len(counts), round(len(labels) * test_size))
    accuracy = None
    if len(labels) - n_test >= 2 * len(counts):
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=n_test, stratify=y, random_state=SEED
        )
        smallest = min(Counter(y_train.tolist()).values())
        held_out = estimator(method, smallest, ocr_dim).fit(x_train, y_train)
        accuracy = float((held_out.predict(x_test) == y_test).mean())
    else:
        n_test = 0
    return estimator(method, min(counts.values()), ocr_dim).fit(x, y), accuracy, n_test


def fetch_vectors(
    settings: Settings, image_ids: list[str], tenant: str = ""
) -> tuple[Vectors, list[str]]:
    """Stored CLIP vectors of ``image_ids`` in their order, and the ids not found."""
    collection = settings.clip.collection
    dim = stored_dim(settings.milvus, collection)
    if dim is None:
        raise HeadError(f"no Milvus collection {collection!r}: ingest images with clip first")
    with VectorStore(settings.milvus, collection, dim) as store:
        rows = store.get([vector_id(i, tenant) for i in image_ids])
    found = {str(row["image_id"]): row["vector"] for row in rows}
    missing = [i for i in image_ids if i not in found]
    vectors = np.asarray([found[i] for i in image_ids if i in found], dtype=np.float32)
    return vectors.reshape(-1, dim), missing


def fetch_texts(settings: Settings, image_ids: list[str], tenant: str = "") -> list[str]:
    """Stored OCR text of ``image_ids`` in their order ("" where the ocr task found none)."""
    keys = [vector_id(i, tenant) for i in image_ids]
    with TextStore(settings.milvus, settings.ocr.collection) as store:
        stored = {str(row["id"]): str(row["text"]) for row in store.get(keys)}
    unread = [i for i, key in zip(image_ids, keys, strict=True) if key not in stored]
    if unread:
        log.warning(
            "%d labelled image(s) have no OCR text stored, e.g. %s", len(unread), unread[:3]
        )
    return [stored.get(key, "") for key in keys]


def train(
    settings: Settings,
    name: str,
    labels_csv: Path,
    method: Method = "logreg",
    test_size: float = 0.25,
    tenant: str = "",
    features: tuple[str, ...] = ("clip",),
) -> HeadInfo:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise HeadError(f"head name {name!r}: use letters, digits, - and _")
    pairs = read_labels(labels_csv)
    vectors, missing = fetch_vectors(settings, [image_id for image_id, _ in pairs], tenant)
    if missing:
        log.warning(
            "%d labelled image(s) have no stored vector, e.g. %s", len(missing), missing[:3]
        )
    absent = set(missing)
    found = [(image_id, label) for image_id, label in pairs if image_id not in absent]
    labels = [label for _, label in found]
    texts = None
    if uses_ocr(features):
        texts = fetch_texts(settings, [image_id for image_id, _ in found], tenant)
    head, accuracy, n_test = fit(vectors, labels, method, test_size, texts)
    info = HeadInfo(
        name=name,
        method=method,
        model=settings.clip.model,
        collection=settings.clip.collection,
        dim=int(vectors.shape[1]),
        classes=[str(c) for c in head.classes_],
        accuracy=accuracy,
        n_train=len(labels) - n_test,
        n_test=n_test,
        trained_at=utcnow().isoformat(),
        features=list(features),
    )
    save(settings.classify.heads_dir, info, head)
    return info


def save(folder: Path, info: HeadInfo, head: Any) -> None:
    """Estimator first, metadata last: a head is visible once its JSON appears."""
    import skops.io

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{info.name}.skops.tmp"
    skops.io.dump(head, tmp)
    os.replace(tmp, folder / f"{info.name}.skops")
    tmp_json = folder / f".{info.name}.json.tmp"
    tmp_json.write_text(json.dumps(asdict(info), indent=2) + "\n")
    os.replace(tmp_json, folder / f"{info.name}.json")


def list_heads(folder: Path) -> list[HeadInfo]:
    return [HeadInfo(**json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]


@dataclass(frozen=True)
class Head:
    info: HeadInfo
    estimator: Any

    @classmethod
    def load(cls, meta: Path) -> Head:
        import skops.io

        info = HeadInfo(**json.loads(meta.read_text()))
        path = meta.with_suffix(".skops")
        untrusted = set(skops.io.get_untrusted_types(file=path))
        if untrusted - EXTRA_TRUSTED:
            raise HeadError(f"{path} holds untrusted types {sorted(untrusted - EXTRA_TRUSTED)}")
        return cls(info, skops.io.load(path, trusted=sorted(untrusted)))

    @property
    def uses_ocr(self) -> bool:
        return uses_ocr(self.info.features)

    def predict(self, vectors: Vectors, texts: list[str] | None = None) -> list[ClassPrediction]:
        """The most probable class of each row, with its probability; ``texts`` (the
        images' OCR text) are required by heads trained with the ocr feature."""
        if self.uses_ocr and texts is None:
            raise HeadError(f"head {self.info.name!r} reads OCR text: pass the images' texts")
        probabilities = self.estimator.predict_proba(
            rows(vectors, texts if self.uses_ocr else None)
        )
        best = probabilities.argmax(axis=1)
        return [
            ClassPrediction(
                head=self.info.name,
                class_id=int(i),
                label=self.info.classes[int(i)],
                proba=float(row[i]),
            )
            for row, i in zip(probabilities, best, strict=True)
        ]


class HeadRegistry:
    """The heads of a folder, reloaded when its files change (training needs no restart)."""

    def __init__(self, folder: Path, dim: int, model: str) -> None:
        self.folder = folder
        self.dim = dim
        self.model = model
        self.heads: list[Head] = []
        self._seen: tuple[tuple[str, int], ...] | None = None

    def refresh(self) -> list[Head]:
        files = sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []
        seen = tuple((p.name, p.stat().st_mtime_ns) for p in files)
        if seen != self._seen:
            self._seen = seen
            self.heads = [head for path in files if (head := self._load(path)) is not None]
        return self.heads

    def _load(self, meta: Path) -> Head | None:
        try:
            head = Head.load(meta)
        except (HeadError, OSError, ValueError, TypeError) as exc:
            log.warning("classifier head %s skipped: %s", meta.name, exc)
            return None
        if head.info.dim != self.dim:
            log.warning(
                "classifier head %s skipped: trained on dim %d, this model gives %d",
                meta.name,
                head.info.dim,
                self.dim,
            )
            return None
        if head.info.model != self.model:
            # Same dim, maybe another model (or the same one under a fallback name).
            log.warning(
                "classifier head %s was trained on vectors of %s, this task runs %s",
                meta.name,
                head.info.model,
                self.model,
            )
        return head
