"""Kafka connection settings turned into FastStream and aiokafka arguments, in one place."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped,unused-ignore]
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from consumers.config.settings import KafkaSettings
from consumers.ops.metrics import message_metrics

_Client = TypeVar("_Client")
CLI_CLIENT_ID = "imagestream-cli"
_SASL = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    if not settings.security_protocol.endswith("SSL"):
        return None
    return ssl.create_default_context(
        cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
    )


def security(settings: KafkaSettings) -> BaseSecurity | None:
    context = _ssl_context(settings)
    if settings.security_protocol.startswith("SASL"):
        mechanism = settings.sasl_mechanism or "PLAIN"
        password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
        return _SASL[mechanism](
            username=settings.sasl_username or "",
            password=password,
            ssl_context=context,
            use_ssl=context is not None,
        )
    if context is not None:
        return BaseSecurity(ssl_context=context, use_ssl=True)
    return None


def make_broker(settings: KafkaSettings, **kwargs: Any) -> KafkaBroker:
    """A broker whose producer waits for every in-sync replica (acks=all), with
    FastStream's Prometheus middleware ahead of any ``middlewares`` passed in."""
    kwargs["middlewares"] = (message_metrics(), *kwargs.get("middlewares", ()))
    return KafkaBroker(
        settings.bootstrap_servers,
        security=security(settings),
        acks="all",
        enable_idempotence=settings.enable_idempotence,
        client_id="imagestream",
        # "Received"/"Processed" per batch at DEBUG: our own logs and metrics say more.
        log_level=logging.DEBUG,
        **kwargs,
    )


def client_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Arguments for plain aiokafka clients (the CLI's producer and result reader)."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
        "client_id": CLI_CLIENT_ID,
    }
    context = _ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        kwargs["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password:
            kwargs["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return kwargs


def make_producer(settings: KafkaSettings, client_id: str = "imagestream") -> AIOKafkaProducer:
    """A plain aiokafka producer (acks=all) for processes without a FastStream broker."""
    kwargs = client_kwargs(settings) | {"client_id": client_id}
    return AIOKafkaProducer(**kwargs, acks="all", enable_idempotence=settings.enable_idempotence)


@asynccontextmanager
async def started(client: _Client) -> AsyncIterator[_Client]:
    """An aiokafka producer, consumer or admin client, started for the block and stopped
    (an admin client closed) after it, also when ``start()`` itself failed or was
    cancelled: aiokafka leaves what a failed start opened for the garbage collector,
    which reports it as "Unclosed AIOKafka..." (aio-libs/aiokafka#715, #1130), and a stop
    is harmless on a client that never started."""
    handle: Any = client
    try:
        await handle.start()
        yield client
    finally:
        await (handle.close() if isinstance(client, AIOKafkaAdminClient) else handle.stop())
