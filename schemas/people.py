"""The ``people.v1`` contract: how the grouping of faces into persons changes.

A backend follows persons from here without polling the gateway. Events are keyed by
``{tenant}/{person_id}`` (or ``person_id`` without a tenant), so one person's events stay
in order on one partition. ``event_id`` is deterministic from what changed: the same
change published twice (a redelivered image, a retried request) carries the same id.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

from pydantic import Field

from schemas.events import _Event, utcnow


class PersonChange(StrEnum):
    CREATED = "created"  # enough similar faces founded a person
    FACES_ASSIGNED = "faces_assigned"  # faces of one image joined the person
    FACES_REMOVED = "faces_removed"  # a user took faces out of the person
    RENAMED = "renamed"
    MERGED = "merged"  # merged_into now holds this person's faces
    RECLUSTERED = "reclustered"  # `imagestream people recluster` rebuilt its faces


class PersonChanged(_Event):
    """One change of one person; ``face_ids`` are the faces the change is about."""

    event_id: str = Field(description="Deterministic from the change: dedupe on it.")
    tenant: str = Field(default="", description="The collection (tenant); '' = none.")
    person_id: str = Field(description="Stable within the tenant, e.g. p-3f2a9c01d4e5.")
    change: PersonChange
    face_ids: list[str] = Field(default_factory=list, description="{image_id}#{n} ids.")
    name: str | None = Field(default=None, description="The name a user gave, if any.")
    merged_into: str | None = Field(default=None, description="merged: the surviving person.")
    source_event_id: str | None = Field(
        default=None, description="The ImageSubmitted event whose faces caused the change."
    )
    changed_at: datetime = Field(default_factory=utcnow)


def change_id(tenant: str, person_id: str, change: PersonChange, *parts: str) -> str:
    """The event id of a change: the same change always hashes to the same id."""
    text = "\x1f".join([tenant, person_id, change.value, *parts])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def person_key(tenant: str, person_id: str) -> bytes:
    key = f"{tenant}/{person_id}" if tenant else person_id
    return key.encode("utf-8", "surrogatepass")
