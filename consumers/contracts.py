"""Generated contracts: JSON Schema per event model and the AsyncAPI document.

Both are derived from the pydantic models and the FastStream subscribers, written under
``schemas/generated/`` and checked in, so non-Python producers can validate events.
``imagestream schemas --check`` (run by the tests) fails when they are stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from consumers.service import ConsumerService
from consumers.settings import Settings
from schemas.events import schema_models

GENERATED = Path(__file__).resolve().parent.parent / "schemas" / "generated"


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


def rendered() -> dict[str, str]:
    files = {
        f"{name}.schema.json": model.model_json_schema(mode="serialization")
        for name, model in schema_models().items()
    }
    files["asyncapi.json"] = asyncapi_document()
    return {name: json.dumps(doc, indent=2, sort_keys=True) + "\n" for name, doc in files.items()}


def write(folder: Path = GENERATED) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered().items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written


def stale(folder: Path = GENERATED) -> list[str]:
    """Names of generated files that are missing or differ from what the code renders."""
    return [
        name
        for name, text in rendered().items()
        if not (folder / name).is_file() or (folder / name).read_text() != text
    ]
