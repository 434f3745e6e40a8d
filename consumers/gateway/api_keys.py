"""Gateway API keys: what a key may do, how it is stored (a hash, never the key), and the
keys file ``imagestream keys create`` (``consumers/cli/keys.py``) appends to.

A key is ``isk_<id>_<secret>``: the id names it in logs and metrics, the secret is 32
random bytes. Only the SHA-256 of the whole key is stored (in ``gateway.auth.keys`` or
the keys file); a salted slow hash buys nothing for a 256-bit random secret, and a fast
one keeps every request's check cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from consumers.config.task_settings import RUNTIME_DIR

KEYS_FILE = RUNTIME_DIR / "keys.json"
PREFIX = "isk_"


class Scope(StrEnum):
    INGEST = "ingest"  # upload images, embeddings and labels, read own results
    SEARCH = "search"  # text search, thumbnails
    FACES = "faces"  # the face task's results, and people (faces grouped)
    ADMIN = "admin"  # every scope, and every tenant (a collection of any name, or none)


class ApiKeyRecord(BaseModel):
    """One key as stored: its hash, the tenants it may read and write, its scopes."""

    id: str = Field(min_length=1, max_length=64, description="Public: names the key in logs.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the key.")
    tenants: list[str] = Field(
        default_factory=list, description="Collections it may use; the first is the default."
    )
    scopes: list[Scope] = Field(min_length=1)
    rate_per_s: float | None = Field(
        default=None, gt=0, description="Requests per second (default: auth.rate_per_s)."
    )
    burst: int | None = Field(default=None, ge=1, description="Default: auth.burst.")
    name: str = Field(default="", max_length=200, description="Who or what holds it.")

    @model_validator(mode="after")
    def _tenants_are_usable(self) -> ApiKeyRecord:
        if not self.tenants and Scope.ADMIN not in self.scopes:
            raise ValueError(f"key {self.id}: a key without the admin scope needs a tenant")
        for tenant in self.tenants:
            if not tenant or len(tenant) > 64 or not tenant.isprintable():
                raise ValueError(f"key {self.id}: tenant {tenant[:64]!r} is not a collection name")
        return self


class AuthSettings(BaseModel):
    """Who may call the gateway (docs/gateway.md)."""

    keys: list[ApiKeyRecord] = Field(default_factory=list, description="Keys, as hashes.")
    keys_file: Path | None = Field(
        default=KEYS_FILE, description="More keys (`imagestream keys create` writes here)."
    )
    open: bool = Field(
        default=False,
        description="No keys at all: every caller is an admin. Refused unless the gateway "
        "binds to a loopback address.",
    )
    rate_per_s: float = Field(default=20.0, gt=0, description="Per key, sustained.")
    burst: int = Field(default=40, ge=1, description="Per key, requests at once.")
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins browsers may call from; none = closed."
    )


def digest(key: str) -> str:
    # surrogatepass: a header is latin-1 text, but a key given in settings may be anything.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key(
    tenants: list[str],
    scopes: list[Scope],
    rate_per_s: float | None = None,
    name: str = "",
    burst: int | None = None,
) -> tuple[str, ApiKeyRecord]:
    """A fresh key and the record to store for it (the key itself is shown once)."""
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKeyRecord(
        id=key_id,
        sha256=digest(key),
        tenants=tenants,
        scopes=scopes,
        rate_per_s=rate_per_s,
        burst=burst,
        name=name,
    )
    return key, record


class _KeysFile(BaseModel):
    keys: list[ApiKeyRecord] = Field(default_factory=list)


def load_keys(path: Path | None) -> list[ApiKeyRecord]:
    """The keys in ``path``; none when there is no such file."""
    if path is None or not path.is_file():
        return []
    return _KeysFile.model_validate_json(path.read_bytes()).keys


def append_key(path: Path, record: ApiKeyRecord) -> None:
    """Add ``record`` to the keys file, written whole to a temporary file and renamed, so
    a gateway reading it never sees half a file; readable by its owner only."""
    keys = [*load_keys(path), record]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    body = _KeysFile(keys=keys).model_dump(mode="json", exclude_none=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(body, out, indent=2)
    temporary.replace(path)


def dev_key(auth: AuthSettings, tenant: str = "dev") -> tuple[str, AuthSettings]:
    """A fresh key for a local stack (every scope but admin, one tenant), held in memory
    only: ``imagestream up`` prints it, and it is gone when the stack stops."""
    key, record = new_key([tenant], [Scope.INGEST, Scope.SEARCH, Scope.FACES], name="dev")
    return key, auth.model_copy(update={"keys": [*auth.keys, record]})
