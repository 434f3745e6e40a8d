"""Faces grouped into persons on dlib's real weights, through the real stack (Tansu,
moto S3 server, milvus-lite): versions of two people's photos (mirror, crop, half size,
brighter, JPEG quality 40, rotated 5 degrees) and a photo without a face in, exactly two
persons out; then redelivery, a rename, and a recluster that repairs a split."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.cli.people import recluster_tenant
from consumers.client.ingest import result_reader
from consumers.config.settings import (
    FaceSettings,
    GatewaySettings,
    PeopleSettings,
    S3Settings,
    Settings,
)
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import Broker
from consumers.gateway.api_keys import AuthSettings
from consumers.gateway.server import running_gateway
from consumers.people.assign import same_person_threshold
from consumers.people.book import Book
from consumers.people.registry import PERSON_KEY
from consumers.vectorstore.store import VectorRow
from consumers.worker.kafka import client_kwargs, started
from schemas.events import ImageSubmitted, TaskResult
from schemas.people import PersonChange, PersonChanged
from schemas.topics import Topics
from tests.face_support import photo_versions
from tests.helpers import collect, event, jpeg, produce_events, sample_jpeg, upload
from tests.stack_settings import stack_settings

pytestmark = pytest.mark.integration
TENANT = "family"
# Every edit of face_support.VERSIONS once, over the two people (each image costs ~0.5 s).
PHOTOS = {
    "astronaut": ("original", "mirror", "brighter", "jpeg40"),
    "camera": ("original", "crop", "half", "rotated5"),
}


@pytest.fixture
async def settings(kafka_broker: Broker, s3_server: S3Settings, tmp_path: Path) -> Settings:
    return await stack_settings(
        kafka_broker.bootstrap_servers,
        s3_server,
        tmp_path,
        tmp_path / "models",
        face=FaceSettings(enabled=True, model="Dlib", device="cpu", max_records=4),
        # keys and tenant scopes: tests/gateway/test_gateway_auth.py
        gateway=GatewaySettings(port=0, auth=AuthSettings(open=True, keys_file=None)),
    )


async def test_two_people_become_exactly_two_persons_and_names_survive_recluster(
    settings: Settings,
) -> None:
    truth, events = await _photos(settings)
    book = Book(settings)
    async with (
        running_consumers(settings, ["face"]),
        _people_reader(settings) as changes,
        result_reader(settings) as reader,
    ):
        await produce_events(settings, events)
        results = await collect(reader, len(events), timeout_s=120)
        persons = _stored(book)
        # A redelivered event (same image, same event id) keeps the face's person.
        await produce_events(settings, [events[0]])
        (again,) = await collect(reader, 1, timeout_s=60)
        followed = await _read_changes(changes, set(truth))
        try:
            assert len(persons) == 2
            assert _purity_and_completeness(persons, truth) == (1.0, 1.0)
            _results_agree(results, persons)
            _scores_split_at_the_threshold(results, truth)
            assert _person_of(again, persons) == _face_person(again, persons)
            assert {c.person_id for c in followed if c.change is PersonChange.CREATED} == set(
                persons
            )
            told = {f for c in followed if c.change in _JOINED for f in c.face_ids}
            assert told == set(truth)  # a follower of people.v1 learns every face's person
            by_who = {truth[faces[0]]: p for p, faces in persons.items()}
            await _recluster_keeps_names(settings, book, by_who["astronaut"], persons)
            await _merge_and_remove_over_http(settings, reader, by_who, events)
        finally:
            book.close()


async def _recluster_keeps_names(
    settings: Settings, book: Book, astronaut: str, persons: dict[str, list[str]]
) -> None:
    book.rename(TENANT, astronaut, "Eileen Collins")
    _split_one_face(book, persons[astronaut][-1])
    assert len(_stored(book)) == 3
    done = await recluster_tenant(settings, TENANT)
    assert done.changed == 1  # the split-off face is back
    after = {p.person_id: p for p in book.people(TENANT)}
    assert set(after) == set(persons)
    assert after[astronaut].name == "Eileen Collins"
    assert sorted(f.face_id for f in after[astronaut].faces) == sorted(persons[astronaut])


async def _merge_and_remove_over_http(
    settings: Settings,
    reader: AIOKafkaConsumer,
    by_who: dict[str, str],
    events: list[ImageSubmitted],
) -> None:
    """A merge made through the gateway holds for a face assigned after it; a face taken
    out stays out when its image is processed again."""
    astronaut, camera = by_who["astronaut"], by_who["camera"]
    folder = events[0].uri.rpartition("/")[0]
    later = event("camera-darker", f"{folder}/camera-darker.jpg", collection=TENANT)
    darker = photo_versions("camera", ("darker",))["darker"]
    await upload(settings, {later.bucket_key()[1]: jpeg(darker)})
    query = f"?collection={TENANT}"
    async with (
        running_gateway(settings, any_port_if_busy=True) as gateway,
        aiohttp.ClientSession(gateway.url) as http,
    ):
        async with http.post(
            f"/v1/people/{astronaut}/merge{query}", json={"people": [camera]}
        ) as answer:
            assert answer.status == 200, await answer.text()
        await produce_events(settings, [later])
        (result,) = await collect(reader, 1, timeout_s=60)
        assert (result.faces or [])[0].person_id == astronaut  # not the merged-away id
        async with http.get(f"/v1/people{query}") as answer:
            listed = (await answer.json())["people"]
        assert [(p["person_id"], p["name"], p["face_count"]) for p in listed] == [
            (astronaut, "Eileen Collins", 9)
        ]
        async with http.delete(f"/v1/people/{astronaut}/faces/camera-darker%230{query}") as answer:
            assert answer.status == 200, await answer.text()
        await produce_events(settings, [later])  # the same image again
        (again,) = await collect(reader, 1, timeout_s=60)
        assert (again.faces or [])[0].person_id is None
        async with http.get(f"/v1/people/{camera}{query}") as answer:
            shown = await answer.json()
        assert shown["person_id"] == astronaut
        assert "camera-darker" not in shown["image_ids"]
        async with http.get(f"/v1/people/p-none{query}") as answer:
            assert answer.status == 404


_JOINED = (PersonChange.CREATED, PersonChange.FACES_ASSIGNED)


async def _photos(settings: Settings) -> tuple[dict[str, str], list[ImageSubmitted]]:
    """Uploads the versions and a photo without a face; face id -> who, and the events."""
    run = uuid.uuid4().hex[:6]
    objects, truth = {}, {}
    for person, versions in PHOTOS.items():
        for name, pixels in photo_versions(person, versions).items():
            objects[f"{run}/{person}-{name}.jpg"] = jpeg(pixels)
            truth[f"{person}-{name}#0"] = person
    for scene in ("coffee",):
        objects[f"{run}/{scene}.jpg"] = sample_jpeg(scene)
    await upload(settings, objects)
    uri = f"s3://{settings.s3.bucket}/{run}"
    events = [
        event(
            key.removeprefix(f"{run}/").removesuffix(".jpg"),
            f"{uri}/{key.split('/')[1]}",
            collection=TENANT,
        )
        for key in objects
    ]
    return truth, events


def _stored(book: Book) -> dict[str, list[str]]:
    return {p.person_id: [f.face_id for f in p.faces] for p in book.people(TENANT)}


def _results_agree(results: list[TaskResult], persons: dict[str, list[str]]) -> None:
    """A result names the person its face is in now, or none (it came too early)."""
    for result in results:
        assert (result.status.value, result.model) == ("ok", "Dlib"), result.error
        for face in result.faces or []:
            assert face.person_id in (None, _owner(face.face_id, persons)), face


def _scores_split_at_the_threshold(results: list[TaskResult], truth: dict[str, str]) -> None:
    """Every pair of faces is scored once, by the later one's search (neighbours are
    every earlier face of the tenant): one person's versions score at or above the
    threshold, two people below it. Random weights cannot do this."""
    threshold = same_person_threshold("Dlib", PeopleSettings())
    scores = {
        frozenset((face.face_id, near.id)): near.score
        for result in results
        for face in result.faces or []
        for near in face.neighbors
    }
    assert len(scores) == len(truth) * (len(truth) - 1) // 2
    same = [s for pair, s in scores.items() if len({truth[f] for f in pair}) == 1]
    different = [s for pair, s in scores.items() if len({truth[f] for f in pair}) == 2]
    assert min(same) >= threshold > max(different), (min(same), max(different))


def _owner(face_id: str, persons: dict[str, list[str]]) -> str:
    return next(p for p, faces in persons.items() if face_id in faces)


def _face_person(result: TaskResult, persons: dict[str, list[str]]) -> str:
    return _owner((result.faces or [])[0].face_id, persons)


def _person_of(result: TaskResult, persons: dict[str, list[str]]) -> str | None:
    return (result.faces or [])[0].person_id


def _purity_and_completeness(
    persons: dict[str, list[str]], truth: dict[str, str]
) -> tuple[float, float]:
    """Purity: faces in their person's majority class; completeness: faces of each
    true person found in that person's biggest cluster (both 1.0 when perfect)."""
    total = len(truth)
    pure = sum(
        max(sum(truth[f] == who for f in faces) for who in set(truth.values()))
        for faces in persons.values()
    )
    complete = sum(
        max(sum(truth[f] == who for f in faces) for faces in persons.values())
        for who in set(truth.values())
    )
    return pure / total, complete / total


def _split_one_face(book: Book, face_id: str) -> None:
    """What two consumers founding at once can leave: one face under another person."""
    faces = book._open()
    assert faces is not None
    key = f"{TENANT}/{face_id}"
    (row,) = faces.get([key])
    split = VectorRow.stored(row)
    faces.upsert([VectorRow.stored({**row, "metadata": {**split.metadata, PERSON_KEY: "p-split"}})])


@asynccontextmanager
async def _people_reader(settings: Settings) -> AsyncIterator[AIOKafkaConsumer]:
    topic = Topics(settings.kafka.topic_prefix).people
    consumer = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False)
    async with started(consumer):
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        yield consumer


async def _read_changes(consumer: AIOKafkaConsumer, faces: set[str]) -> list[PersonChanged]:
    """Events until every face in ``faces`` joined a person (or 10 s passed)."""
    found: list[PersonChanged] = []
    for _ in range(20):
        batches = await consumer.getmany(timeout_ms=500)
        found += [PersonChanged.model_validate_json(r.value) for rs in batches.values() for r in rs]
        if {f for c in found if c.change in _JOINED for f in c.face_ids} >= faces:
            break
    return found
