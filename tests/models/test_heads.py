"""Classifier heads: label files, fitting, the skops round trip and its trust check."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consumers.config.settings import Settings
from consumers.devstack.text_images import render
from consumers.models.classifier_heads import (
    Head,
    HeadError,
    HeadInfo,
    HeadRegistry,
    fit,
    read_labels,
    save,
)
from consumers.models.head_features import FeatureError, parse_features
from consumers.models.tesseract import OcrEncoder, page_of


def _blobs(per_class: int, dim: int = 8) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(3)
    centres = {"cat": np.eye(dim)[0] * 3, "cup": np.eye(dim)[1] * 3, "dog": np.eye(dim)[2] * 3}
    rows, labels = [], []
    for label, centre in centres.items():
        rows.append(centre + rng.normal(0, 0.3, (per_class, dim)))
        labels += [label] * per_class
    return np.concatenate(rows).astype(np.float32), labels


def _info(name: str, classes: list[str], dim: int = 8) -> HeadInfo:
    return HeadInfo(name, "logreg", "random:tiny", "clip_images", dim, classes, 1.0, 9, 3, "now")


def test_read_labels_skips_a_header_and_rejects_bad_rows(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("image_id,label\na-1, cat\n\na-2,dog\n")
    assert read_labels(good) == [("a-1", "cat"), ("a-2", "dog")]
    bad = tmp_path / "bad.csv"
    bad.write_text("a-1,cat\na-2\n")
    with pytest.raises(HeadError, match=r"rows \[2\]"):
        read_labels(bad)


def test_fit_needs_two_classes_with_two_images_each() -> None:
    vectors, _ = _blobs(2)
    with pytest.raises(HeadError, match="2\\+ classes"):
        fit(vectors[:3], ["cat", "cat", "dog"], "logreg", 0.25)


@pytest.mark.parametrize("method", ["logreg", "stack"])
def test_both_methods_fit_report_held_out_accuracy_and_survive_a_round_trip(
    method: str, tmp_path: Path
) -> None:
    vectors, labels = _blobs(8)
    head, accuracy, n_test = fit(vectors, labels, method, 0.25)  # type: ignore[arg-type]
    assert n_test == 6
    assert accuracy == pytest.approx(1.0)  # well-separated blobs
    save(tmp_path, _info("kind", [str(c) for c in head.classes_]), head)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kind.json", "kind.skops"]

    loaded = Head.load(tmp_path / "kind.json")
    predictions = loaded.predict(vectors[[0, 8, 16]])
    assert [(p.label, p.class_id) for p in predictions] == [("cat", 0), ("cup", 1), ("dog", 2)]
    assert all(0.5 < p.proba <= 1 for p in predictions)


def test_too_few_images_for_a_held_out_split_still_train() -> None:
    vectors, labels = _blobs(2)
    head, accuracy, n_test = fit(vectors, labels, "logreg", 0.25)
    assert (accuracy, n_test) == (None, 0)
    assert list(head.classes_) == ["cat", "cup", "dog"]


def test_a_head_holding_an_untrusted_type_is_refused(tmp_path: Path) -> None:
    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    skops.io.dump(FunctionTransformer(func=print), tmp_path / "evil.skops")
    (tmp_path / "evil.json").write_text(json.dumps(_info("evil", ["a"]).__dict__))
    with pytest.raises(HeadError, match="untrusted types"):
        Head.load(tmp_path / "evil.json")
    # A consumer skips it with a warning instead of failing.
    assert HeadRegistry(tmp_path, dim=8, model="random:tiny").refresh() == []


def test_the_registry_reloads_when_a_head_is_added_and_skips_other_dims(tmp_path: Path) -> None:
    registry = HeadRegistry(tmp_path / "heads", dim=8, model="random:tiny")
    assert registry.refresh() == []
    vectors, labels = _blobs(4)
    head, _, _ = fit(vectors, labels, "logreg", 0.25)
    save(tmp_path / "heads", _info("kind", ["cat", "cup", "dog"]), head)
    save(tmp_path / "heads", _info("wide", ["cat", "cup", "dog"], dim=16), head)
    assert [h.info.name for h in registry.refresh()] == ["kind"]


def _products(per_class: int) -> tuple[list[str], list[Image.Image]]:
    """Product labels whose class is a word printed among others (seed 004's review photos)."""
    rng = np.random.default_rng(5)
    filler = ["organic", "fresh", "net", "weight", "best", "before", "daily", "premium", "pack"]
    labels, images = [], []
    for label in ("honey", "coffee"):
        for _ in range(per_class):
            words = [*rng.choice(filler, 3, replace=False), label]
            rng.shuffle(words)
            lines = [" ".join(words[:2]).title(), " ".join(words[2:]).title()]
            labels.append(label)
            images.append(render(lines, "DejaVuSans", 30))
    return labels, images


def test_the_ocr_feature_raises_held_out_accuracy_when_the_label_is_printed(
    tmp_path: Path,
) -> None:
    """Vectors that carry no class (noise) against the same with the OCR text read by Debian's
    tesseract: the OCR branch finds the printed class word."""
    labels, images = _products(12)
    settings = Settings(_env_file=None)
    reader = OcrEncoder(settings.ocr, settings)
    reader.load()
    texts = [ocr.text for ocr in reader.read([page_of(image) for image in images])]
    assert sum(label in text.lower() for label, text in zip(labels, texts, strict=True)) >= 22
    noise = np.random.default_rng(9).normal(size=(len(labels), 8)).astype(np.float32)

    # Seed 004's stack (logistic regression + SVC on the vectors, naive Bayes on the text).
    _, clip_only, n_test = fit(noise, labels, "stack", 0.25)
    head, with_ocr, _ = fit(noise, labels, "stack", 0.25, texts)
    assert n_test == 6
    assert clip_only is not None
    assert with_ocr == 1.0
    assert with_ocr >= clip_only + 0.3, clip_only

    info = _info("product", [str(c) for c in head.classes_])
    save(tmp_path, replace(info, method="stack", features=["clip", "ocr"]), head)
    loaded = Head.load(tmp_path / "product.json")  # the skops trust check passes
    assert loaded.uses_ocr
    unseen = ["Premium Coffee", "Pack Of Honey"]
    fresh = np.random.default_rng(10).normal(size=(2, 8)).astype(np.float32)
    predicted = loaded.predict(fresh, unseen)
    assert [p.label for p in predicted] == ["coffee", "honey"]
    with pytest.raises(HeadError, match="reads OCR text"):
        loaded.predict(noise[:2])


def test_features_are_clip_or_clip_and_ocr() -> None:
    assert parse_features("ocr, clip") == ["clip", "ocr"]
    assert parse_features("clip") == ["clip"]
    for bad in ("ocr", "clip,sift", ""):
        with pytest.raises(FeatureError):
            parse_features(bad)
