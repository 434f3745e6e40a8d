"""What a classifier head looks at: the CLIP vector alone, or with the OCR text (seed 004).

Seed 004 stacked CLIP-vector models with a naive Bayes model over the text EasyOCR read
from each photo. ``--features clip,ocr`` does that here: each row is the vector's columns
then one column of text; the CLIP models see the vector columns, a TF-IDF + multinomial
naive Bayes pipeline sees the text, and a stacking classifier learns from their
out-of-fold probabilities (a random forest for ``stack``, seed 004's choice, a logistic
regression for ``logreg``). Everything is a plain scikit-learn estimator, so skops saves
and loads it like the vector-only heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from consumers.models.encoder import Vectors

FEATURES = ("clip", "ocr")
SEED = 0


class FeatureError(ValueError):
    """A --features list this module cannot build."""


def parse_features(text: str) -> list[str]:
    """``clip`` or ``clip,ocr`` (order and repeats ignored); the CLIP vector is required."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    if not names <= set(FEATURES) or "clip" not in names:
        raise FeatureError(f"features {text!r}: choose clip or clip,ocr")
    return sorted(names, key=FEATURES.index)


def uses_ocr(features: Sequence[str]) -> bool:
    return "ocr" in features


def rows(vectors: Vectors, texts: Sequence[str] | None) -> Any:
    """The estimator's input: the vectors, with the texts as one more column if given."""
    if texts is None:
        return vectors
    if len(texts) != len(vectors):
        raise FeatureError(f"{len(texts)} texts for {len(vectors)} vectors")
    table = np.empty((len(vectors), vectors.shape[1] + 1), dtype=object)
    table[:, :-1] = vectors
    table[:, -1] = list(texts)
    return table


def with_ocr(clip_models: list[tuple[str, Any]], dim: int, final: Any, folds: int) -> Any:
    """``clip_models`` on the vector columns and naive Bayes on the text, stacked."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import StackingClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import Pipeline

    vector = list(range(dim))

    def on_vectors(model: Any) -> Any:
        return Pipeline(
            [("clip", ColumnTransformer([("clip", "passthrough", vector)])), ("m", model)]
        )

    # A scalar column index hands the vectorizer a 1-d array of strings, as it wants.
    text = ColumnTransformer([("ocr", TfidfVectorizer(sublinear_tf=True), dim)])
    ocr_nb = Pipeline([("ocr", text), ("nb", MultinomialNB())])
    base = [(name, on_vectors(model)) for name, model in clip_models] + [("ocr_nb", ocr_nb)]
    return StackingClassifier(base, final_estimator=final, cv=folds)
