"""The legacy adapter's pure parts: the SSRF guard, s3_path mapping, jobs, bodies and
the re-send schedule."""

from __future__ import annotations

from datetime import timedelta

import pytest
from aiohttp import web
from yarl import URL

from consumers.cli.main import _parser
from consumers.config.settings import LegacySettings, Settings
from consumers.legacy.callbacks import Outcome, callback_worst_s, legacy_body
from consumers.legacy.poller import parse_job
from consumers.legacy.resend import Resender, failed_again
from consumers.legacy.sources import host_allowed, s3_uri_for_url
from consumers.legacy.ssrf import (
    AddressGuard,
    Refused,
    check_url,
    get_following_redirects,
    guarded_session,
)
from schemas.events import CallbackFailed, Face, Neighbor, Status, TaskError, TaskResult, utcnow

REFUSED = [
    ("http://127.0.0.1/x", "loopback"),
    ("http://[::1]/x", "loopback"),
    ("http://[::ffff:127.0.0.1]/x", "loopback"),
    ("http://10.1.2.3/x", "private"),
    ("http://192.168.0.10/x", "private"),
    ("http://172.16.5.4/x", "private"),
    ("http://100.64.0.1/x", "private"),  # carrier-grade NAT: not global
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/x", "link-local"),
    ("http://0.0.0.0/x", "not a unicast"),
    ("http://224.0.0.1/x", "not a unicast"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("gopher://example.com/x", "scheme 'gopher'"),
    ("ftp://example.com/x", "scheme 'ftp'"),
    ("http:///nohost", "no host"),
]


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_the_guard_refuses_internal_targets_and_other_schemes(url: str, why: str) -> None:
    with pytest.raises(Refused, match=why):
        check_url(url, AddressGuard())


def test_allowed_networks_open_loopback_and_private_but_never_link_local() -> None:
    guard = AddressGuard(["127.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16"])
    assert check_url("http://127.0.0.1:8000/x", guard).port == 8000
    assert check_url("https://10.9.8.7/x", guard).host == "10.9.8.7"
    with pytest.raises(Refused, match="private"):
        check_url("http://192.168.1.1/x", guard)
    with pytest.raises(Refused, match="link-local"):
        check_url("http://169.254.169.254/x", guard)
    assert check_url("https://93.184.215.14/x", AddressGuard()).scheme == "https"


async def test_names_are_checked_on_every_address_they_resolve_to() -> None:
    # "localhost" resolves to loopback: the resolver inside the session refuses it.
    async with guarded_session(AddressGuard(), timeout_s=5) as session:
        with pytest.raises(Refused, match="localhost"):
            await session.get("http://localhost:9/x")


async def test_redirects_are_followed_by_hand_and_each_hop_checked() -> None:
    app = web.Application()

    async def to_metadata(_: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    app.router.add_get("/r", to_metadata)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    guard = AddressGuard(["127.0.0.0/8"])
    try:
        async with guarded_session(guard, timeout_s=5) as session:
            with pytest.raises(Refused, match="link-local"):
                await get_following_redirects(session, f"http://127.0.0.1:{port}/r", guard)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("url", "endpoint", "uri"),
    [
        ("http://minio:9000/images/a/b.jpg", "http://minio:9000", "s3://images/a/b.jpg"),
        (
            "http://minio:9000/images/a%20b.jpg?X-Amz-Sig=1",
            "http://minio:9000",
            "s3://images/a b.jpg",
        ),
        ("http://images.minio:9000/k.jpg", "http://minio:9000", "s3://images/k.jpg"),
        ("https://s3.example.com/images/k.jpg", "https://s3.example.com:443", "s3://images/k.jpg"),
        ("http://minio:9001/images/k.jpg", "http://minio:9000", None),
        ("http://cdn.example.com/images/k.jpg", "http://minio:9000", None),
        ("https://images.s3.amazonaws.com/k.jpg", None, "s3://images/k.jpg"),
        ("https://images.s3.eu-west-1.amazonaws.com/k.jpg", None, "s3://images/k.jpg"),
        ("https://s3.eu-west-1.amazonaws.com/images/k.jpg", None, "s3://images/k.jpg"),
        ("https://example.com/images/k.jpg", None, None),
    ],
)
def test_s3_urls_map_to_bucket_and_key(url: str, endpoint: str | None, uri: str | None) -> None:
    assert s3_uri_for_url(URL(url), endpoint) == uri


def test_host_allow_list_takes_exact_names_and_wildcard_subdomains() -> None:
    allowed = ["cdn.example.com", "*.photos.example.org"]
    assert host_allowed("CDN.example.com", allowed)
    assert host_allowed("a.b.photos.example.org", allowed)
    assert not host_allowed("photos.example.org", allowed)
    assert not host_allowed("evil-cdn.example.com", allowed)
    assert not host_allowed("example.com", [])


@pytest.mark.parametrize("body", [b"", b"  ", b"{}", b"null", b"[]"])
def test_an_empty_answer_is_no_job(body: bytes) -> None:
    assert parse_job(body) is None


def test_a_job_is_read_like_the_old_workers_did() -> None:
    job = parse_job(b'{"id": 42, "s3_path": "s3://images/x.jpg", "img_callback_url": "http://b/c"}')
    assert job is not None
    assert (job.id, job.s3_path, job.img_callback_url) == ("42", "s3://images/x.jpg", "http://b/c")
    with pytest.raises(ValueError, match="not JSON"):
        parse_job(b"<html>")
    with pytest.raises(ValueError, match="not a job"):
        parse_job(b'{"s3_path": "s3://images/x.jpg"}')


def _result(**fields: object) -> TaskResult:
    base = {"result_id": "r", "source_event_id": "e", "image_id": "7", "task": "clip"}
    return TaskResult.model_validate({"status": Status.OK, **base, **fields})


def test_the_callback_body_has_the_legacy_shape_with_the_own_id_first() -> None:
    neighbours = [Neighbor(id=str(i), score=1 - i / 100) for i in range(30)]
    body = legacy_body(_result(neighbors=neighbours), limit=20)
    assert list(body) == ["result"]
    (ids,) = body["result"]
    assert ids[0] == "7"
    assert ids[1:] == [str(i) for i in range(30) if i != 7][:19]
    assert legacy_body(_result(), limit=20) == {"result": [["7"]]}


def test_face_results_answer_with_image_ids_and_no_face_is_an_error() -> None:
    face = Face(
        face_id="7#0",
        bbox=(0, 0, 10, 10),
        confidence=0.9,
        neighbors=[Neighbor(id="3#1", score=0.9), Neighbor(id="3#0", score=0.8)],
    )
    assert legacy_body(_result(task="face", faces=[face]), 20) == {"result": [["7", "3"]]}
    empty = legacy_body(_result(task="face", faces=[]), 20)
    assert empty["result"] == [[]]
    assert empty["error"]["code"] == "no_face"


def test_an_error_result_is_an_empty_list_plus_the_error() -> None:
    error = TaskError(code="object_not_found", message="no such key")
    body = legacy_body(_result(status=Status.ERROR, error=error), 20)
    assert body == {"result": [[]], "error": {"code": "object_not_found", "message": "no such key"}}


def _failed(**fields: object) -> CallbackFailed:
    base: dict[str, object] = {
        "result_id": "r", "image_id": "i", "task": "clip", "callback_url": "http://b/cb",
        "legacy_id": "i", "body": {"result": [["i"]]}, "attempts": 8, "error": "HTTP 503",
    }  # fmt: skip
    return CallbackFailed.model_validate(base | fields)


def test_a_failed_callback_is_due_after_a_doubling_pause_and_kept_for_resend_for_s() -> None:
    legacy = LegacySettings(resend_backoff_s=10, resend_backoff_max_s=25, resend_for_s=3600)
    resender = Resender(Settings(_env_file=None, legacy=legacy), None)  # type: ignore[arg-type]
    now = utcnow()
    assert 9 < resender.due_in_s(_failed(failed_at=now)) <= 10
    assert 19 < resender.due_in_s(_failed(failed_at=now, resends=1)) <= 20
    assert 24 < resender.due_in_s(_failed(failed_at=now, resends=5)) <= 25  # capped
    assert resender.due_in_s(_failed(failed_at=now - timedelta(seconds=30))) < 0
    assert resender.wanted(_failed(first_failed_at=now - timedelta(minutes=59)))
    assert not resender.wanted(_failed(first_failed_at=now - timedelta(minutes=61)))
    assert not resender.wanted(_failed(retriable=False))


def test_a_callback_failing_again_keeps_when_it_first_failed_and_counts_the_round() -> None:
    first = _failed(failed_at=utcnow() - timedelta(minutes=5))
    again = failed_again(first, Outcome(False, 1, "HTTP 502"))
    assert (again.resends, again.attempts, again.error) == (1, 1, "HTTP 502")
    assert again.first_failed_at == first.failed_at < again.failed_at
    third = failed_again(again, Outcome(False, 1, "HTTP 404 (not retried)", retriable=False))
    assert (third.resends, third.retriable, third.since()) == (2, False, first.failed_at)


def test_legacy_resend_is_a_subcommand_and_legacy_alone_still_runs_the_adapter() -> None:
    args = _parser().parse_args(["legacy", "resend", "--hours", "2", "--include-refused"])
    assert (args.hours, args.include_refused, args.dry_run) == (2.0, True, False)
    assert callable(args.handler)
    plain = _parser().parse_args(["legacy", "--only", "sender"])
    assert plain.only == "sender"
    assert not hasattr(plain, "handler")


def test_a_callbacks_worst_case_counts_every_timeout_and_every_pause() -> None:
    # 8 tries of 10 s, and pauses 0.5, 1, 2, 4, 8, 8, 8 (capped) at +20%: the sender's
    # poll interval is stretched past this, so a hanging target never costs its group.
    assert callback_worst_s(LegacySettings()) == pytest.approx(80 + 1.2 * 31.5)
    assert callback_worst_s(LegacySettings(callback_attempts=1)) == pytest.approx(10)
