"""The ``text`` and ``hybrid`` modes of text search: word lists and how lists are fused.

``text``: the query's words against the caption texts and the OCR texts, each ranked by
BM25 (``consumers/vectorstore/text_store.py``: Milvus's own full-text search where it has one); an
image's score is the sum of its two BM25 scores, so words found in both count twice.
``hybrid``: those two lists and the CLIP similarity list fused by reciprocal rank
fusion, score = sum over the lists that found the image of 1 / (k + rank), rank from 1
(k = ``search.rrf_k``, 60 as in Cormack et al.); each list is read ``search.fusion_depth``
deep. Ties go to the image more lists found. Every hit names the lists that found it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from consumers.config.settings import Settings
from consumers.tasks.base import strip_tenant, vector_id
from consumers.vectorstore.text_store import TextStore
from schemas.events import Neighbor, TextQuery

CLIP_LIST = "clip"
Group = tuple[str, tuple[str, ...] | None]  # (tenant, restricted image ids)
Hit = tuple[str, float]  # (image id, score), best first in a list
Lists = dict[str, list[Hit]]  # list name -> its ranked hits


def text_collections(settings: Settings) -> dict[str, str]:
    """The word lists and the Milvus text collections they are read from."""
    return {"caption": settings.caption.text_collection, "ocr": settings.ocr.collection}


def group_queries(queries: Mapping[int, TextQuery]) -> dict[Group, list[int]]:
    """Queries by (tenant, id restriction): a Milvus filter is shared by one call."""
    groups: dict[Group, list[int]] = defaultdict(list)
    for i, query in queries.items():
        restrict = tuple(query.image_ids) if query.image_ids is not None else None
        groups[(query.collection or "", restrict)].append(i)
    return groups


def word_lists(
    stores: Mapping[str, TextStore], queries: Mapping[int, TextQuery], depth: int
) -> dict[int, Lists]:
    """Each query's BM25 list per text collection: one Milvus call per (group, store)."""
    found: dict[int, Lists] = {i: {} for i in queries}
    for (tenant, restrict), members in group_queries(queries).items():
        keys = None if restrict is None else [vector_id(i, tenant) for i in restrict]
        limit = max(depth, *(queries[i].top_k for i in members))
        texts = [queries[i].text for i in members]
        for name, store in stores.items():
            ranked = store.search(texts, limit, tenant=tenant, restrict_ids=keys)
            for i, hits in zip(members, ranked, strict=True):
                found[i][name] = [(strip_tenant(key, tenant), score) for key, score in hits]
    return found


def bm25_sum(lists: Lists, top_k: int) -> list[Neighbor]:
    """``text`` mode: BM25 scores added up over the lists."""
    scores: dict[str, float] = defaultdict(float)
    for hits in lists.values():
        for image_id, score in hits:
            scores[image_id] += score
    return _ranked(scores, lists, top_k)


def reciprocal_rank_fusion(lists: Lists, top_k: int, k: int) -> list[Neighbor]:
    """``hybrid`` mode: sum of 1 / (k + rank) over the lists that found each image."""
    scores: dict[str, float] = defaultdict(float)
    for hits in lists.values():
        for rank, (image_id, _) in enumerate(hits, 1):
            scores[image_id] += 1.0 / (k + rank)
    return _ranked(scores, lists, top_k)


def _ranked(scores: Mapping[str, float], lists: Lists, top_k: int) -> list[Neighbor]:
    found_by: dict[str, list[str]] = defaultdict(list)
    for name, hits in lists.items():
        for image_id, _ in hits:
            found_by[image_id].append(name)
    order = sorted(scores, key=lambda i: (-scores[i], -len(found_by[i]), i))[:top_k]
    return [Neighbor(id=i, score=scores[i], lists=sorted(set(found_by[i]))) for i in order]


def fuse(query: TextQuery, lists: Lists, k: int) -> list[Neighbor]:
    if query.mode == "text":
        return bm25_sum(lists, query.top_k)
    return reciprocal_rank_fusion(lists, query.top_k, k)
