"""Text-to-image search from the producer side: publish one ``TextQuery`` on ``queries.v1``
and wait for its result (``imagestream search "a hedgehog"``; the consumer side is
``consumers/search/text.py``)."""

from __future__ import annotations

import uuid

from consumers.client.ingest import publish, result_reader, wait_for_results
from consumers.config.settings import Settings
from schemas.events import SEARCH_TASK, SearchMode, TaskResult, TextQuery
from schemas.topics import Topics


async def search_text(
    settings: Settings,
    text: str,
    *,
    top_k: int = 5,
    tenant: str | None = None,
    image_ids: list[str] | None = None,
    mode: SearchMode = "vector",
    timeout_s: float = 60.0,
) -> TaskResult | None:
    """Publish one ``TextQuery`` and return its result (None when none came in time)."""
    query = TextQuery(
        event_id=uuid.uuid4().hex,
        query_id=f"q-{uuid.uuid4().hex[:12]}",
        text=text,
        top_k=top_k,
        collection=tenant,
        image_ids=image_ids,
        mode=mode,
    )
    topic = Topics(settings.kafka.topic_prefix).queries
    async with result_reader(settings) as reader:
        await publish(settings, topic, [(query.query_id, query)])
        expected = {query.event_id: {SEARCH_TASK}}
        found = await wait_for_results(reader, expected, timeout_s, lambda _: None)
    return found[0] if found else None
