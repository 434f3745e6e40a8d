"""Generated contracts: JSON Schema per event model, the AsyncAPI and the gateway's OpenAPI.

All derive from the pydantic models, the FastStream subscribers and the gateway app, written
under ``schemas/generated/`` and checked in, so non-Python producers can validate events.
The settings reference, docs/configuration.md, is rendered from the settings tree on the
same path. ``imagestream schemas --check`` (run by the tests) fails when any is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from consumers.config.settings import Settings
from consumers.contracts import settings_page
from consumers.gateway.app import create_app
from consumers.worker.service import ConsumerService
from schemas.events import CallbackFailed, ImageSubmitted, TaskResult, TextQuery
from schemas.people import PersonChanged

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "schemas" / "generated"
CONFIG_PAGE = ROOT / "docs" / "configuration.md"
# The models at the Kafka boundary: one JSON Schema each.
SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "ImageSubmitted": ImageSubmitted,
    "TextQuery": TextQuery,
    "TaskResult": TaskResult,
    "CallbackFailed": CallbackFailed,
    "PersonChanged": PersonChanged,
}


def asyncapi_document() -> dict[str, Any]:
    from faststream.specification import AsyncAPI

    # Defaults only: the checked-in document must not depend on this shell's variables.
    settings = Settings.model_construct()
    service = ConsumerService(settings, settings.task_names())
    spec = AsyncAPI(
        service.broker,
        title="imagestream",
        version="1",
        description="Images in S3 + an event on Kafka in; one TaskResult per image and task out.",
    )
    document: dict[str, Any] = spec.to_specification().to_jsonable()
    return document


def gateway_openapi() -> dict[str, Any]:
    """The HTTP gateway's OpenAPI document (also served at /openapi.json)."""
    document: dict[str, Any] = create_app(Settings.model_construct()).openapi()
    return document


def rendered() -> dict[str, str]:
    files = {
        f"{name}.schema.json": model.model_json_schema(mode="serialization")
        for name, model in SCHEMA_MODELS.items()
    }
    files["asyncapi.json"] = asyncapi_document()
    files["gateway.openapi.json"] = gateway_openapi()
    return {name: json.dumps(doc, indent=2, sort_keys=True) + "\n" for name, doc in files.items()}


def write(folder: Path = GENERATED) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    CONFIG_PAGE.write_text(settings_page.render())
    written = [CONFIG_PAGE]
    for name, text in rendered().items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written


def stale(folder: Path = GENERATED) -> list[str]:
    """Names of generated files that are missing or differ from what the code renders."""
    names = [
        name
        for name, text in rendered().items()
        if not (folder / name).is_file() or (folder / name).read_text() != text
    ]
    if not CONFIG_PAGE.is_file() or CONFIG_PAGE.read_text() != settings_page.render():
        names.append("docs/configuration.md")
    return names
