"""The ``labels`` task: zero-shot top-k labels of each image in the stream (seed 001).

The label set's text embeddings come from ``consumers/models/zero_shot.py`` through
``shared_label_sets``: one cache per loaded CLIP model and label configuration, shared
with the gateway's ``/v1/labels`` when both run in one process. The ``search`` timing is
the scoring against the label vectors.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

import torch

from consumers.models.zero_shot import shared_label_sets
from consumers.pipeline.results import since
from consumers.tasks.clip_heads import ClipHeadTask
from schemas.events import Label


class LabelsTask(ClipHeadTask):
    name = "labels"

    def infer(self, prepared: list[torch.Tensor]) -> list[dict[str, Any]]:
        vectors = self.encoder.encode_images(prepared)
        start = perf_counter()
        options, zero_shot = self.encoder.settings.labels, self.encoder.settings.zero_shot
        sets = shared_label_sets(zero_shot, self.clip)
        ranked: list[list[Label]] = sets.top_k(vectors, options.label_set, options.top_k)
        # A batched stage's time counts for every item, as with Milvus searches.
        took = since(start)
        return [{"labels": labels, "search_ms": took} for labels in ranked]
