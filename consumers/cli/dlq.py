"""``imagestream dlq replay``: registered on the main CLI."""

from __future__ import annotations

import asyncio
from typing import Any

from consumers.config.settings import Settings
from consumers.ops.replay import ReplayFilter, replay
from schemas.events import ErrorCode
from schemas.topics import Topics


def add_command(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="the dead-letter topic").add_subparsers(
        dest="action", required=True
    )
    action = dlq.add_parser("replay", help="re-publish dead-lettered events (after a fix)")
    action.add_argument("--code", action="append", choices=[c.value for c in ErrorCode])
    action.add_argument("--task", help="only records dead-lettered by this task")
    action.add_argument("--limit", type=int, help="at most this many events")
    action.add_argument("--dry-run", action="store_true", help="list, do not publish")
    action.set_defaults(
        handler=lambda args: replay_command(
            Settings(), args.code, args.task, args.limit, args.dry_run
        )
    )


def replay_command(
    settings: Settings, codes: list[str] | None, task: str | None, limit: int | None, dry_run: bool
) -> int:
    """One line per replayed event, then a count."""

    def show(info: dict[str, str]) -> None:
        where = "/".join(info.get(f"source_{k}", "?") for k in ("topic", "partition", "offset"))
        print(
            f"{where}  {info.get('task', '?')}  {info.get('code', '?')}  {info.get('message', '')}"
        )

    chosen = ReplayFilter(frozenset(codes or ()), task)
    count = asyncio.run(replay(settings, chosen, dry_run=dry_run, limit=limit, on_record=show))
    verb = "would replay" if dry_run else "replayed"
    print(f"{verb} {count} event(s) to {Topics(settings.kafka.topic_prefix).images}")
    return 0
