"""``imagestream people recluster``: registered on the main CLI.

It opens the faces and people collections itself: against milvus-lite, stop the stack
first (one process per folder); against a Milvus server, run it any time, preferably
while few images arrive (faces assigned during the rebuild keep what assignment gave
them, and the next recluster includes them).
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from typing import Any

from consumers.config.settings import Settings
from consumers.people.assign import same_person_threshold
from consumers.people.recluster import Reclustered, recluster
from consumers.people.registry import Registry
from consumers.tasks.face import MODEL_KEY
from consumers.vectorstore.store import VectorStore, stored_dim
from consumers.worker.kafka import make_producer, started
from schemas.events import dump
from schemas.people import person_key
from schemas.topics import Topics


def add_command(sub: Any) -> None:
    people = sub.add_parser("people", help="faces grouped into persons")
    actions = people.add_subparsers(dest="action", required=True)
    rebuild = actions.add_parser(
        "recluster", help="rebuild a tenant's persons with DBSCAN, keeping names"
    )
    rebuild.add_argument("--tenant", default="", help="the collection (tenant); '' = none")
    rebuild.set_defaults(handler=lambda args: recluster_command(Settings(), args))


def recluster_command(settings: Settings, args: argparse.Namespace) -> int:
    done = asyncio.run(recluster_tenant(settings, args.tenant))
    print(
        f"{done.faces} face(s), {len(done.persons)} person(s), {done.changed} face(s) moved; "
        f"{len(done.events)} event(s) on {Topics(settings.kafka.topic_prefix).people}"
    )
    return 0


async def recluster_tenant(settings: Settings, tenant: str) -> Reclustered:
    """Rebuild one tenant (in a thread: Milvus is blocking), then publish its events."""
    done = await asyncio.to_thread(_recluster, settings, tenant)
    topic = Topics(settings.kafka.topic_prefix).people
    async with started(make_producer(settings.kafka, "imagestream-people")) as producer:
        sends = [
            await producer.send(topic, dump(e), key=person_key(e.tenant, e.person_id))
            for e in done.events
        ]
        await asyncio.gather(*sends)
    return done


def _recluster(settings: Settings, tenant: str) -> Reclustered:
    face, people = settings.face, settings.face.people
    dim = stored_dim(settings.milvus, face.collection)
    if dim is None:
        return Reclustered()
    with VectorStore(settings.milvus, face.collection, dim) as faces:
        registry = Registry(settings.milvus, people)
        try:
            threshold = same_person_threshold(_model(faces, tenant, face.model), people)
            return recluster(faces, registry, tenant, threshold, people.min_faces)
        finally:
            registry.close()


def _model(faces: VectorStore, tenant: str, configured: str) -> str:
    """The model that made most of the tenant's stored face vectors."""
    models = Counter(
        str((row["metadata"] or {}).get(MODEL_KEY) or configured)
        for row in faces.scan(tenant, ["metadata"])
    )
    return models.most_common(1)[0][0] if models else configured
