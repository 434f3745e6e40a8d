"""The people endpoints: faces grouped into persons (``consumers/people/``), per tenant.

- ``GET /v1/people``: every person, with its face count and a cover face.
- ``GET /v1/people/{person_id}``: its faces and the images they are in.
- ``PATCH /v1/people/{person_id}``: name it.
- ``POST /v1/people/{person_id}/merge``: merge other persons into it.
- ``DELETE /v1/people/{person_id}/faces/{face_id}``: take a face out of it for good.

Every call needs a key with the faces scope; ``collection`` (the tenant, as given on
``POST /v1/images``) must be one of the key's tenants and defaults to its first. The
gateway reads the faces and people collections directly (Milvus calls in a thread), and
publishes each change on ``people.v1`` before answering.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, Field

from consumers.gateway.auth import FacesKey
from consumers.gateway.deps import Api
from consumers.gateway.errors import ApiError, ApiErrorCode, request_id
from consumers.gateway.responses import ERRORS
from consumers.people.book import Book, FaceEntry, Person, UnknownPerson
from consumers.vectorstore.milvus_errors import StoreUnavailable
from schemas.events import dump
from schemas.people import PersonChanged, person_key

router = APIRouter()
T = TypeVar("T")
Tenant = Annotated[str, Query(max_length=64, description="The collection (tenant); '' = none.")]


class FaceOut(BaseModel):
    face_id: str
    image_id: str
    bbox: tuple[int, int, int, int] = Field(description="x, y, width, height in pixels.")
    confidence: float


class PersonSummary(BaseModel):
    person_id: str
    name: str | None
    face_count: int
    cover: FaceOut = Field(description="The largest face: the one to show for the person.")


class PeopleResponse(BaseModel):
    request_id: str
    collection: str
    people: list[PersonSummary] = Field(description="Most faces first.")


class PersonResponse(BaseModel):
    request_id: str
    collection: str
    person_id: str
    name: str | None
    faces: list[FaceOut]
    image_ids: list[str]


class RenameRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class MergeRequest(BaseModel):
    people: list[str] = Field(min_length=1, max_length=100, description="Merged into this one.")


def book(request: Request) -> Book:
    """One Book per app, made on first use and closed with the app (``close_book``)."""
    state = request.app.state
    if getattr(state, "people", None) is None:
        state.people = Book(state.gateway.settings)
    found: Book = state.people
    return found


def close_book(state: object) -> None:
    found = getattr(state, "people", None)
    if isinstance(found, Book):
        found.close()


async def _call(fn: Callable[[], T]) -> T:
    try:
        return await asyncio.to_thread(fn)
    except UnknownPerson as exc:
        raise ApiError(ApiErrorCode.NOT_FOUND, str(exc)) from exc
    except StoreUnavailable as exc:
        raise ApiError(ApiErrorCode.UNAVAILABLE, f"the vector store is unavailable: {exc}") from exc


async def _publish(gateway: Api, changes: list[PersonChanged]) -> None:
    runtime = gateway.runtime
    if runtime.producer is None:
        raise ApiError(ApiErrorCode.UNAVAILABLE, "the gateway is starting")
    topic = runtime.topics.people
    sends = [
        await runtime.producer.send(topic, dump(c), key=person_key(c.tenant, c.person_id))
        for c in changes
    ]
    await asyncio.gather(*sends)


def _face(face: FaceEntry) -> FaceOut:
    return FaceOut(
        face_id=face.face_id, image_id=face.image_id, bbox=face.bbox, confidence=face.confidence
    )


def _person(request: Request, tenant: str, person: Person) -> PersonResponse:
    return PersonResponse(
        request_id=request_id(request),
        collection=tenant,
        person_id=person.person_id,
        name=person.name,
        faces=[_face(f) for f in person.faces],
        image_ids=person.image_ids,
    )


async def _change(
    request: Request,
    gateway: Api,
    tenant: str,
    change: Callable[[], tuple[Person, list[PersonChanged]]],
) -> PersonResponse:
    """Make a change (in a thread), publish what it changed on people.v1, answer the person."""
    found, changes = await _call(change)
    await _publish(gateway, changes)
    return _person(request, tenant, found)


@router.get("/v1/people", response_model=PeopleResponse, responses=ERRORS, summary="Persons")
async def people(request: Request, key: FacesKey, collection: Tenant = "") -> PeopleResponse:
    tenant = key.tenant(collection)
    found = await _call(lambda: book(request).people(tenant))
    summaries = [
        PersonSummary(
            person_id=p.person_id, name=p.name, face_count=len(p.faces), cover=_face(p.cover)
        )
        for p in found
    ]
    return PeopleResponse(request_id=request_id(request), collection=tenant, people=summaries)


@router.get(
    "/v1/people/{person_id}",
    response_model=PersonResponse,
    responses=ERRORS,
    summary="One person's faces and images",
)
async def person(
    request: Request, key: FacesKey, person_id: str, collection: Tenant = ""
) -> PersonResponse:
    tenant = key.tenant(collection)
    found = await _call(lambda: book(request).person(tenant, person_id))
    return _person(request, tenant, found)


@router.patch(
    "/v1/people/{person_id}", response_model=PersonResponse, responses=ERRORS, summary="Name it"
)
async def rename(
    request: Request,
    gateway: Api,
    person_id: str,
    body: Annotated[RenameRequest, Body()],
    key: FacesKey,
    collection: Tenant = "",
) -> PersonResponse:
    tenant = key.tenant(collection)
    return await _change(
        request, gateway, tenant, lambda: book(request).rename(tenant, person_id, body.name)
    )


@router.post(
    "/v1/people/{person_id}/merge",
    response_model=PersonResponse,
    responses=ERRORS,
    summary="Merge other persons into this one",
)
async def merge(
    request: Request,
    gateway: Api,
    person_id: str,
    body: Annotated[MergeRequest, Body()],
    key: FacesKey,
    collection: Tenant = "",
) -> PersonResponse:
    tenant = key.tenant(collection)
    return await _change(
        request, gateway, tenant, lambda: book(request).merge(tenant, person_id, body.people)
    )


@router.delete(
    "/v1/people/{person_id}/faces/{face_id:path}",
    response_model=PersonResponse,
    responses=ERRORS,
    summary="Take a face out of a person (assignment and recluster respect it)",
)
async def remove_face(
    request: Request,
    gateway: Api,
    key: FacesKey,
    person_id: str,
    face_id: str,
    collection: Tenant = "",
) -> PersonResponse:
    tenant = key.tenant(collection)
    return await _change(
        request, gateway, tenant, lambda: book(request).remove_face(tenant, person_id, face_id)
    )
