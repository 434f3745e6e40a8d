"""Outbound HTTP that cannot be aimed at the inside of the network (SSRF).

Legacy jobs name URLs (an image to download, a callback to call) that the adapter then
requests from inside the deployment. A URL is allowed only when:

- its scheme is http or https;
- where a host allow-list applies (downloads: ``legacy.allowed_hosts``), its host is on
  it, and so is every redirect hop's;
- every address its host resolves to is public, or inside ``allowed_networks``.
  Link-local addresses (169.254.0.0/16, fe80::/10: cloud metadata services) are refused
  even when listed; so are multicast, reserved and unspecified ones. IPv4-mapped IPv6
  addresses are judged by the IPv4 address they carry.

The check runs inside the HTTP client's DNS resolver (``GuardedResolver``), so the
addresses checked are the ones connected to: a name that resolves differently on a
second lookup (DNS rebinding) gains nothing. Hosts given as IP literals skip resolvers,
so ``check_url`` judges them up front; redirects are followed by hand
(``get_following_redirects``) so every hop is checked the same way. Downloads and
callbacks each get their own guard (``legacy.download_networks``,
``legacy.callback_networks``): a private range opened for callbacks is not reachable by
a download that redirects into it. Messages show URLs redacted (``consumers/ops/redact.py``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from consumers.ops.redact import redact_url

if TYPE_CHECKING:
    from consumers.config.settings import LegacySettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SCHEMES = ("http", "https")
MAX_REDIRECTS = 5


class Refused(Exception):
    """The URL may not be requested; the message says why."""


class AddressGuard:
    def __init__(self, allowed_networks: Iterable[str] = (), setting: str = "networks") -> None:
        try:
            self.allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
        except ValueError as exc:
            raise ValueError(f"legacy.{setting}: {exc}") from exc

    def check(self, address: str | IPAddress, host: str = "") -> None:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        named = f"{host} ({ip})" if host and host != str(ip) else str(ip)
        if ip.is_link_local:
            raise Refused(f"{named} is a link-local address")
        if ip.is_multicast or ip.is_unspecified:
            raise Refused(f"{named} is not a unicast address")
        if any(ip in network for network in self.allowed):
            return
        if ip.is_loopback:
            raise Refused(f"{named} is a loopback address (not in allowed_networks)")
        if ip.is_reserved:
            raise Refused(f"{named} is a reserved address")
        if ip.is_private or not ip.is_global:
            raise Refused(f"{named} is a private address (not in allowed_networks)")


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """Exact host names, or ``*.example.com`` for every subdomain of example.com."""
    host = host.lower().rstrip(".")
    for entry in (a.lower().rstrip(".") for a in allowed):
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


def check_url(url: str | URL, guard: AddressGuard, hosts: Sequence[str] | None = None) -> URL:
    """The parsed URL when its scheme is allowed, its host is in ``hosts`` (``None``: any
    host) and an IP-literal host passes the guard."""
    parsed = url if isinstance(url, URL) else URL(url)
    if parsed.scheme not in SCHEMES:
        raise Refused(f"scheme {parsed.scheme or 'none'!r} is not allowed (http or https only)")
    if not parsed.host:
        raise Refused(f"{redact_url(parsed)!r} has no host")
    if hosts is not None and not host_allowed(parsed.host, hosts):
        raise Refused(f"host {parsed.host[:200]!r} is not in legacy.allowed_hosts")
    literal = _literal(parsed.host)
    if literal is not None:
        guard.check(literal)
    return parsed


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses if any address is refused."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            self._guard.check(result["host"], host)
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_session(guard: AddressGuard, timeout_s: float) -> aiohttp.ClientSession:
    """A session whose every connection passes the guard (redirects: see below)."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(guard), use_dns_cache=False)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        trust_env=False,  # an environment proxy would connect on our behalf, unchecked
    )


async def get_following_redirects(
    session: aiohttp.ClientSession,
    url: str,
    guard: AddressGuard,
    hosts: Sequence[str] | None = None,
    **kwargs: Any,
) -> aiohttp.ClientResponse:
    """GET with redirects followed by hand, each hop checked against the guard and the
    same host allow-list as ``url``; the caller releases the response."""
    target = check_url(url, guard, hosts)
    for _ in range(MAX_REDIRECTS + 1):
        response = await session.get(target, allow_redirects=False, **kwargs)
        location = response.headers.get("Location")
        if response.status not in (301, 302, 303, 307, 308) or not location:
            return response
        response.release()
        target = check_url(target.join(URL(location)), guard, hosts)
    raise Refused(f"more than {MAX_REDIRECTS} redirects from {redact_url(url)}")


def guards(legacy: LegacySettings) -> tuple[AddressGuard, AddressGuard]:
    """(downloads, callbacks): separate, so a network opened for callbacks is not one a
    download may reach (through a redirect, say). ``allowed_networks`` is the old name
    of ``callback_networks``."""
    downloads = AddressGuard(legacy.download_networks, "download_networks")
    networks = [*legacy.callback_networks, *legacy.allowed_networks]
    return downloads, AddressGuard(networks, "callback_networks")
