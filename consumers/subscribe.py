"""The batch subscriber every consumer group here uses: manual acks, raw bytes in."""

from __future__ import annotations

from typing import Any

from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from consumers.settings import KafkaSettings, SearchSettings, TaskSettings
from schemas.topics import Topics


async def raw_values(msg: Any) -> list[bytes]:
    """Hand the handler the raw bytes: a malformed event must become an error result,
    not a decoding exception that fails the whole batch."""
    return [record.value or b"" for record in msg.raw_message]


def consumer_group(name: str, options: TaskSettings | SearchSettings, kafka: KafkaSettings) -> str:
    """``options.group_id``, else ``imagestream-<name>`` after the topic prefix (the
    group KEDA's ScaledObjects in infra/k8s watch)."""
    return options.group_id or Topics(kafka.topic_prefix).group(f"imagestream-{name}")


def batch_subscriber(
    broker: KafkaBroker,
    topic: str,
    name: str,
    options: TaskSettings | SearchSettings,
    kafka: KafkaSettings,
    *,
    listener: Any,
    description: str,
) -> Any:
    """A subscriber for ``consumer_group(name, ...)`` whose commits the handler makes;
    ``listener`` sees the group's rebalances."""
    return broker.subscriber(
        topic,
        group_id=consumer_group(name, options, kafka),
        batch=True,
        max_records=options.max_records,
        batch_timeout_ms=options.batch_timeout_ms,
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_values,
        auto_offset_reset=kafka.auto_offset_reset,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        max_poll_interval_ms=kafka.max_poll_interval_ms,
        listener=listener,
        title=f"{topic}:{name}",
        description=description,
    )
