"""``imagestream legacy resend``: registered under the ``legacy`` command's parser."""

from __future__ import annotations

import asyncio
from typing import Any

from consumers.config.settings import Settings
from consumers.legacy.resend import resend_command


def add_command(legacy: Any) -> None:
    actions = legacy.add_subparsers(dest="action")
    resend = actions.add_parser("resend", help="send failed callbacks again, now")
    resend.add_argument("--hours", type=float, help="only those that last failed this recently")
    resend.add_argument(
        "--include-refused", action="store_true", help="also those refused for good (4xx, URL)"
    )
    resend.add_argument("--dry-run", action="store_true", help="list, do not send")
    resend.set_defaults(
        handler=lambda args: asyncio.run(
            resend_command(Settings(), args.hours, args.include_refused, args.dry_run)
        )
    )
