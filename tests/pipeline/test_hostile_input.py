"""The hostile input corpus through a running consumer (real Tansu, moto and milvus-lite).

Every case yields its documented outcome, bad input lands on the DLQ with its original
bytes, good events in the same batches are unaffected, the consumer keeps consuming, and
no secret reaches the log. Then a DLQ replay after the fix turns an error into a result.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from unittest.mock import patch

import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

import consumers.vectorstore.store as store_module
from consumers.cli.main import main
from consumers.client.ingest import result_reader
from consumers.config.settings import (
    ClipSettings,
    DeliverySettings,
    MilvusSettings,
    S3Settings,
    Settings,
)
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import Broker
from consumers.ops.replay import ReplayFilter, replay
from consumers.search.rpc import RPC_GROUP
from consumers.vectorstore.store import VectorStore
from consumers.worker.dlq import dlq_headers, original_headers
from consumers.worker.service import ConsumerService
from schemas.events import Status, TaskResult
from schemas.rpc import RpcReply
from schemas.topics import Topics
from tests.boundary_corpus import boundary_cases
from tests.helpers import collect, produce, produce_records, upload
from tests.hostile_corpus import BUCKET, MAX_OBJECT_BYTES, MISSING_BUCKET, Case, build
from tests.kafka_checks import read_all, wait_until_committed
from tests.s3_gate import s3_gate
from tests.stack_settings import stack_settings

pytestmark = pytest.mark.integration
CLIP_TINY_DIM = 32
S3_SECRET = f"s3-secret-{uuid.uuid4().hex}"
SASL_SECRET = f"sasl-secret-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
async def settings(
    kafka_broker: Broker,
    s3_server: S3Settings,
    model_cache: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Settings]:
    async with s3_gate(str(s3_server.endpoint_url)) as gate:
        settings = await stack_settings(
            kafka_broker.bootstrap_servers,
            s3_server.model_copy(
                update={
                    "endpoint_url": gate.url,  # refuses the denied- and archived- objects
                    "allowed_buckets": [BUCKET, MISSING_BUCKET],
                    "max_object_bytes": MAX_OBJECT_BYTES,
                    "secret_access_key": SecretStr(S3_SECRET),  # moto accepts any
                }
            ),
            tmp_path_factory.mktemp("hostile"),
            model_cache,
            partitions=4,
            tag="h",
            kafka={
                "sasl_username": "imagestream",
                "sasl_password": SecretStr(SASL_SECRET),  # configured, unused on PLAINTEXT
            },
            clip=ClipSettings(model="random:tiny", device="cpu", max_records=64),
            delivery=DeliverySettings(retry_delays_s=[0.2, 0.5], replay_pause_s=0.5),
        )
        await asyncio.to_thread(_narrow_tenant_collection, settings)
        yield settings


def _narrow_tenant_collection(settings: Settings) -> None:
    """The clip collection made beforehand with a 16-byte tenant field, so that Milvus
    itself refuses the row of an event whose tenant is longer (a per-row rejection, as a
    Milvus server gives for metadata over its JSON field's 64 KiB)."""
    with patch.object(store_module, "TENANT_MAX_BYTES", 16):
        VectorStore(settings.milvus, settings.clip.collection, CLIP_TINY_DIM).open()


def _outcome(results: list[TaskResult]) -> str:
    if not results:
        return "none"
    first = results[0]
    return first.error.code.value if first.error else first.status.value


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def test_hostile_corpus_yields_documented_outcomes(
    settings: Settings, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)  # the start of a consumer, logged at its most verbose
    async with running_consumers(settings, ["clip"]) as service:
        caplog.set_level(logging.INFO)
        await _run_corpus(settings, service, capsys)
        await _run_rpc(settings, service)
    # Every case was an item error: none failed a batch, so none was split and re-run
    # through the model (the row Milvus refused included).
    assert "splitting it to isolate" not in caplog.text
    assert caplog.text  # the log was captured, and holds no secret
    for secret in (S3_SECRET, SASL_SECRET):
        assert secret not in caplog.text
        assert secret not in repr(settings)


async def _run_corpus(
    settings: Settings, service: ConsumerService, capsys: pytest.CaptureFixture[str]
) -> None:
    run = uuid.uuid4().hex[:6]
    cases = build(run) + boundary_cases(run)
    await upload(settings, {k: v for case in cases for k, v in case.objects.items()}, BUCKET)
    expected = sum(case.results for case in cases)
    topics = service.topics
    async with result_reader(settings) as reader:
        await produce_records(
            settings,
            [
                (getattr(topics, case.topic), key, value, case.headers)
                for case in cases
                for key, value in case.records
            ],
        )
        results = await collect(reader, expected, timeout_s=120)
        for topic, group in ((topics.images, "clip"), (topics.queries, "search")):
            await wait_until_committed(settings, topic, topics.group(f"imagestream-{group}"), 60)
        results += await collect(reader, 1, timeout_s=1.0)  # anything beyond the expected
    by_case: dict[str, list[TaskResult]] = defaultdict(list)
    for result in results:
        by_case[result.image_id].append(result)
    dlq = await _dlq_by_key(settings)

    rows = [("case", "records", "expected", "outcome", "dlq", "message")]
    for case in cases:
        got = by_case.pop(case.name, [])
        letters = dlq.pop(case.name, [])
        message = got[0].error.message[:70] if got and got[0].error else ""
        counts = str(len(case.records)), case.expect, _outcome(got), str(len(letters))
        rows.append((case.name, *counts, message))
        assert (_outcome(got), len(got)) == (case.expect, case.results), case.name
        assert len(letters) == case.dlq_records, case.name
        for letter in letters:
            _check_letter(case, letter)
        if case.expect == "ok":
            assert got[0].model == "random:tiny"
            assert case.name not in {n.id for n in got[0].neighbors}
    assert not by_case, by_case  # no result for an image id outside the corpus
    assert not dlq, dlq
    await _check_replay_skips_cut_letters(settings)
    assert len(rows) - 1 >= 30
    with capsys.disabled():
        print(f"\nhostile input corpus: {len(rows) - 1} cases\n{_table(rows)}")


async def _run_rpc(settings: Settings, service: ConsumerService) -> None:
    """Hostile rpc.v1 records: one error reply for each that names where to reply, none
    for the others, and the RPC group commits past them all."""
    topics = service.topics
    far, huge = '"deadline": "2100-01-01T00:00:00Z"', b"x" * 900_000  # echoed in the reply

    def asking(n: int) -> list[tuple[str, bytes]]:
        return [("reply_to", topics.rpc_replies.encode()), ("correlation_id", f"c{n}".encode())]

    requests = [
        (b'{"kind": "\\ud800", ' + far.encode() + b"}", asking(1)),
        (b"not json", [*asking(2), ("trace", b"\xff\xfe")]),  # FastStream decodes headers
        (b'{"kind": "embed", "images": {"a": "' + huge + b'"}, ' + far.encode() + b"}", asking(3)),
        (b"{}", [("reply_to", b"no topic / name"), ("correlation_id", b"c4")]),
        (b"\x00\x01", []),
    ]
    await produce_records(settings, [(topics.rpc, None, v, h) for v, h in requests])
    await wait_until_committed(settings, topics.rpc, topics.group(RPC_GROUP), 60)
    replies = {
        dict(r.headers).get("correlation_id"): RpcReply.model_validate_json(r.value)
        for r in await read_all(settings, [topics.rpc_replies])
    }
    assert sorted(replies) == [b"c1", b"c2", b"c3"]
    assert all(reply.error is not None for reply in replies.values())


async def _check_replay_skips_cut_letters(settings: Settings) -> None:
    listed: list[dict[str, str]] = []
    count = await replay(settings, ReplayFilter(), dry_run=True, on_record=listed.append)
    assert count == len(listed) > 0
    assert not [info for info in listed if "truncated" in info]


Letter = tuple[bytes, dict[str, str], list[tuple[str, bytes]]]


def _check_letter(case: Case, letter: Letter) -> None:
    value, info, headers = letter
    assert info["code"] == case.expect
    if case.dlq_cut:  # kept as much as fits, and says so
        assert "value cut from" in info["truncated"]
        assert "DLQ record" in info["message"]
        assert case.records[0][1].startswith(value)
        assert len(value) < len(case.records[0][1])
    else:
        assert "truncated" not in info
        assert value == case.records[0][1]  # the original bytes
        assert original_headers(headers) == case.headers


async def _dlq_by_key(settings: Settings) -> dict[str, list[Letter]]:
    letters: dict[str, list[Letter]] = defaultdict(list)
    for record in await read_all(settings, [Topics(settings.kafka.topic_prefix).dlq]):
        key = (record.key or b"").decode()
        letters[key].append((record.value, dlq_headers(record.headers), list(record.headers)))
    return letters


async def test_dlq_replay_after_the_fix_turns_the_error_into_a_result(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `imagestream dlq replay` reads its settings like any command: from the environment.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGESTREAM_KAFKA__BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("IMAGESTREAM_KAFKA__TOPIC_PREFIX", settings.kafka.topic_prefix)
    milvus = MilvusSettings(uri=str(tmp_path / "milvus.db"))
    async with running_consumers(settings.model_copy(update={"milvus": milvus}), ["clip"]):
        await _replay_after_fix(settings, capsys)


async def _cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def _replay_after_fix(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    run = uuid.uuid4().hex[:6]
    key = f"{run}/late.jpg"
    value = (
        f'{{"event_id": "{run}-late", "image_id": "late-{run}", "uri": "s3://{BUCKET}/{key}"}}'
    ).encode()
    async with result_reader(settings) as reader:
        await produce(settings, [(f"late-{run}".encode(), value)])
        (first,) = await _results_for(reader, f"late-{run}", 1)
        assert first.error is not None
        assert first.error.code.value == "object_not_found"
        await upload(settings, {key: build(run)[0].objects[f"{run}/good-a.jpg"]}, BUCKET)
        capsys.readouterr()
        assert await _cli("dlq", "replay", "--code", "object_not_found", "--dry-run") == 0
        listed = capsys.readouterr().out
        assert key in listed
        assert "would replay" in listed
        assert await _cli("dlq", "replay", "--code", "object_not_found", "--task", "clip") == 0
        assert "replayed" in capsys.readouterr().out
        again = await _results_for(reader, f"late-{run}", 1)
    assert [r.status for r in again] == [Status.OK]
    assert again[0].result_id == first.result_id


async def _results_for(reader: AIOKafkaConsumer, image_id: str, count: int) -> list[TaskResult]:
    """The next ``count`` results for ``image_id``; others are skipped (on Tansu the reader
    can start a little before the end of the results topic)."""
    found: list[TaskResult] = []
    deadline = asyncio.get_running_loop().time() + 60
    while len(found) < count and asyncio.get_running_loop().time() < deadline:
        found += [r for r in await collect(reader, 1, timeout_s=1) if r.image_id == image_id]
    return found
