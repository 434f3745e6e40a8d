"""Request/reply between the gateway and the CLIP consumer, over Kafka.

The gateway stages each image in S3 and publishes an ``RpcRequest`` on ``rpc.v1`` with
the Kafka headers ``reply_to`` (its replies topic) and ``correlation_id``. Every CLIP
consumer process also runs this subscriber (one shared consumer group, so requests are
spread over the replicas); FastStream publishes the handler's return value to
``reply_to`` with the same ``correlation_id``. The model therefore stays in the consumer
process and its device thread: RPC work queues behind, and between, pipeline batches
(on a CPU, images queue on the CPU workers behind the batch in progress, and texts run
on the device thread beside it, which pipeline batches there no longer occupy).

Requests are best-effort: the offset is committed once the handler returns, and a request
whose ``deadline`` has passed (its gateway answered 504 already) is skipped. Every
failure, including bad input, becomes an error reply rather than silence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from typing import Any

from faststream.kafka import KafkaRouter
from faststream.middlewares import AckPolicy
from pydantic import GetCoreSchemaHandler, ValidationError
from pydantic_core import CoreSchema, PydanticSerializationError

from consumers.config.settings import Settings
from consumers.models.encoder import Encoder, Vectors
from consumers.models.zero_shot import LabelSets, UnknownLabelSet, shared_label_sets
from consumers.ops.threads import run_in
from consumers.pipeline.decode import decode_and_prepare
from consumers.pipeline.fetch import fetch_staged
from consumers.pipeline.item_errors import ItemError
from consumers.pipeline.records import describe
from consumers.pipeline.s3 import S3Store, S3Unavailable
from consumers.vectorstore.keys import StagingAreas
from consumers.worker.fit import BUDGET_BYTES, clean
from consumers.worker.subscribe import tolerant_parser
from schemas.events import S3_URI, ErrorCode, dump, utcnow
from schemas.rpc import UNKNOWN_LABEL_SET, RpcReply, RpcRequest
from schemas.topics import Topics

log = logging.getLogger("imagestream.rpc")
RPC_GROUP = "imagestream-rpc-clip"


class _KeyedError(Exception):
    def __init__(self, key: str, error: ItemError) -> None:
        super().__init__(error.message)
        self.key = key
        self.error = error


class _Clip:
    """What serving a request needs once the consumer has loaded its CLIP encoder."""

    def __init__(
        self, settings: Settings, encoder: Encoder, s3: S3Store, decode: Executor, device: Executor
    ) -> None:
        encode_texts = getattr(encoder, "encode_texts_with_truncation", None)
        if encode_texts is None:
            raise TypeError(f"{type(encoder).__name__} cannot embed texts")
        self.settings = settings
        self.encoder = encoder
        self.encode_texts: Callable[[list[str]], tuple[Vectors, list[bool]]] = encode_texts
        # Shared with the labels task of this process: each label set is embedded once.
        self.labels = shared_label_sets(
            settings.zero_shot, encoder, lambda texts: encode_texts(texts)[0]
        )
        self.s3 = s3
        self.staging = StagingAreas.of(settings)
        self.decode = decode
        self.device = device

    async def _pixels(self, key: str, uri: str) -> Any:
        match = S3_URI.match(uri)
        if match is None:
            raise _KeyedError(key, ItemError(ErrorCode.INVALID_EVENT, f"not an s3:// URI: {uri}"))
        try:
            data = await fetch_staged(self.s3, self.staging, match["bucket"], match["key"], None)
            encoder = self.encoder  # JPEGs decode at the scale the model needs
            ready = partial(
                decode_and_prepare,
                data,
                self.settings.decode,
                encoder.preprocess,
                encoder.min_input_side,
            )
            return await run_in(self.decode, ready)
        except ItemError as exc:
            raise _KeyedError(key, exc) from exc

    async def serve(self, request: RpcRequest) -> RpcReply:
        reply = RpcReply(model=self.encoder.model_name, dim=self.encoder.dim)
        keys = list(request.images)
        pixels = await asyncio.gather(*(self._pixels(k, request.images[k]) for k in keys))
        if pixels:
            vectors = await run_in(self.device, partial(self.encoder.encode_images, pixels))
            if request.kind == "labels":
                ranked = await run_in(
                    self.device,
                    partial(self.labels.top_k, vectors, request.label_set, request.top_k),
                )
                reply.labels = dict(zip(keys, ranked, strict=True))
            else:
                reply.vectors = {k: v.tolist() for k, v in zip(keys, vectors, strict=True)}
        if request.texts:
            keys = list(request.texts)
            texts = [request.texts[k] for k in keys]
            vectors, cut = await run_in(self.device, partial(self.encode_texts, texts))
            reply.vectors.update({k: v.tolist() for k, v in zip(keys, vectors, strict=True)})
            reply.truncated = [k for k, was_cut in zip(keys, cut, strict=True) if was_cut]
        return reply


def reply_bytes(reply: RpcReply) -> bytes:
    """The reply as published: one that cannot be carried (over the record size limit,
    or text that is not UTF-8) becomes an error reply saying so."""
    try:
        data = dump(reply)
    except (UnicodeEncodeError, PydanticSerializationError):
        return dump(RpcReply.failed(ErrorCode.INTERNAL, "the reply held text that is not UTF-8"))
    if len(data) <= BUDGET_BYTES:
        return data
    if reply.error is not None:  # an error message that echoed too much of the request
        message = clean(reply.error.message, 1000)
        key = clean(reply.error.key) if reply.error.key else None
        return dump(RpcReply.failed(reply.error.code, message, key))
    why = f"the reply is {len(data):,} bytes, over the {BUDGET_BYTES:,} limit: ask for less"
    return dump(RpcReply.failed(ErrorCode.INVALID_EVENT, why))


def read_request(raw: bytes) -> RpcRequest | RpcReply:
    """The request, or the error reply that refuses it: bad bytes get an answer, not
    silence."""
    try:
        return RpcRequest.model_validate_json(raw)
    except ValidationError as exc:
        return RpcReply.failed(ErrorCode.INVALID_EVENT, f"bad request: {describe(exc)}")


class Incoming:
    """What the rpc handler takes: ``read_request`` of the record (the subscriber's
    decoder reads it, so the broker needs no casting). Documented as its wire form."""

    __slots__ = ("request",)

    def __init__(self, request: RpcRequest | RpcReply) -> None:
        self.request = request

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return handler(RpcRequest)


async def _decode(msg: Any) -> Incoming:
    return Incoming(read_request(msg.body))


class EncoderRpc:
    """Subscribes at construction (before the broker starts); serves once ``bind`` ran."""

    def __init__(self, router: KafkaRouter, topics: Topics, settings: Settings) -> None:
        self.settings = settings
        self._clip: _Clip | None = None
        kafka = settings.kafka
        subscriber = router.subscriber(
            topics.rpc,
            group_id=topics.group(RPC_GROUP),
            # Best-effort by design: a request lost to a crash times out at the gateway.
            ack_policy=AckPolicy.ACK,
            decoder=_decode,
            parser=tolerant_parser,
            auto_offset_reset="earliest",
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            max_poll_interval_ms=kafka.max_poll_interval_ms,
            fetch_max_wait_ms=kafka.rpc_fetch_max_wait_ms,
            title=f"{topics.rpc}:clip",
            description="Gateway requests (embeddings, zero-shot labels); the reply goes to "
            "the reply_to header's topic with the request's correlation_id.",
        )
        subscriber(self.handle)

    async def handle(self, incoming: Incoming) -> bytes:
        return reply_bytes(await self.answer(incoming.request))

    def bind(self, encoder: Encoder, s3: S3Store, decode: Executor, device: Executor) -> LabelSets:
        self._clip = _Clip(self.settings, encoder, s3, decode, device)
        return self._clip.labels

    async def serve(self, raw: bytes) -> RpcReply:
        return await self.answer(read_request(raw))

    async def answer(self, request: RpcRequest | RpcReply) -> RpcReply:
        if isinstance(request, RpcReply):
            return request  # refused as it was read
        if request.deadline < utcnow():
            return RpcReply.failed(ErrorCode.UNAVAILABLE, "the request expired before it ran")
        if self._clip is None:
            return RpcReply.failed(ErrorCode.UNAVAILABLE, "the CLIP encoder is not loaded yet")
        return await self._serve(self._clip, request)

    @staticmethod
    async def _serve(clip: _Clip, request: RpcRequest) -> RpcReply:
        try:
            return await clip.serve(request)
        except _KeyedError as exc:
            return RpcReply.failed(exc.error.code, exc.error.message, exc.key)
        except UnknownLabelSet as exc:
            return RpcReply.failed(UNKNOWN_LABEL_SET, exc.message)
        except S3Unavailable as exc:
            return RpcReply.failed(ErrorCode.UNAVAILABLE, str(exc))
        except Exception as exc:
            log.exception("rpc %s request failed", request.kind)
            return RpcReply.failed(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
