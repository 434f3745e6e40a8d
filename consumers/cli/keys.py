"""``imagestream keys create``: registered on the main CLI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from consumers.config.settings import Settings
from consumers.gateway.api_keys import KEYS_FILE, Scope, append_key, new_key


def add_command(sub: Any) -> None:
    keys = sub.add_parser("keys", help="gateway API keys").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create", help="make a key; prints it once, stores its hash")
    create.add_argument("--tenant", action="append", default=[], help="repeat for several")
    create.add_argument("--scope", action="append", required=True, choices=[s.value for s in Scope])
    create.add_argument("--rate", type=float, help="requests per second (default: settings)")
    create.add_argument("--burst", type=int, help="requests at once (default: settings)")
    create.add_argument("--name", default="", help="who or what holds it")
    create.add_argument("--file", type=Path, help="keys file (default: gateway.auth.keys_file)")
    create.set_defaults(handler=_create_command)


def _create_command(args: Any) -> int:
    path = args.file or Settings().gateway.auth.keys_file or KEYS_FILE
    try:
        scopes = [Scope(s) for s in args.scope]
        key, record = new_key(args.tenant, scopes, args.rate, args.name, args.burst)
    except ValidationError as exc:
        print(f"imagestream keys create: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    append_key(path, record)
    print(key)
    print(f"stored key {record.id} ({', '.join(record.scopes)}; tenants: "
          f"{', '.join(record.tenants) or 'any'}) in {path}; the key is not shown again",
          file=sys.stderr)  # fmt: skip
    return 0
