"""Classifier heads: label files, fitting, the skops round trip and its trust check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from consumers.heads import Head, HeadError, HeadInfo, HeadRegistry, fit, read_labels, save


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
