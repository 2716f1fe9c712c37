"""Which URLs the browser may fetch: public http(s) hosts only, unless the user opts in.

A page the model opens can make the browser request anything (subresources, redirects, scripts
calling `fetch`), so the check runs on every request, not just the URL the model typed. Hosts are
resolved here and *every* address must be public: a name resolving to one public and one private
address is refused, because the browser may connect to either.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = ("http", "https")
DNS_CACHE_SECONDS = 30.0

# Mapped/embedded IPv4 forms that the OS happily routes to the embedded address: check that one.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(Exception):
    """The policy refuses a URL; the message is written for the model."""


@dataclass(frozen=True)
class Target:
    """A host and port to connect to, with the addresses that were checked."""

    host: str
    port: int
    addresses: tuple[str, ...]


def address_problem(address: IPAddress) -> str | None:
    """Why `address` is not a public internet address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None:
            return address_problem(embedded)
    # Order matters: the most telling name first (127.0.0.1 is also "private" to Python).
    for attribute, name in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_unspecified", "unspecified"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(address, attribute):
            return name
    if not address.is_global:
        return "non-public"
    return None


def split_host_port(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; raises `Refused` for other schemes."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise Refused(f"`{url}` is not a valid URL ({e})") from e
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = f"`{scheme}:`" if scheme else "no scheme"
        raise Refused(
            f"Refused to open `{url}`: the browser only opens http:// and https:// URLs "
            f"(this one has {shown})."
        )
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise Refused(f"`{url}` has no host name.")
    return scheme, host, port or (443 if scheme == "https" else 80)


class NetworkPolicy:
    """Decides which hosts the browser may contact.

    `allow_private_network`: False (the default) allows public addresses only; True allows
    everything (unsafe on a machine with internal services: the model can reach them); a list of
    hosts (`"127.0.0.1"`, `"localhost:8080"`, `"intranet.example"`) allows those hosts (and ports,
    where given) in addition to public addresses.
    """

    def __init__(self, allow_private_network: bool | Iterable[str] = False) -> None:
        self.allow_all = allow_private_network is True
        self._cache: dict[tuple[str, int], tuple[float, tuple[str, ...]]] = {}
        self.allowed: frozenset[tuple[str, int | None]] = frozenset()
        if not isinstance(allow_private_network, bool):
            self.allowed = frozenset(parse_host_port(h) for h in allow_private_network)

    def _explicitly_allowed(self, host: str, port: int) -> bool:
        return (host, None) in self.allowed or (host, port) in self.allowed

    async def _resolve(self, host: str, port: int, what: str) -> tuple[str, ...]:
        # A page asks for the same few hosts over and over (route check, then proxy): cache
        # briefly. Safe against rebinding because the proxy connects to these very addresses.
        now = time.monotonic()
        cached = self._cache.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except (socket.gaierror, UnicodeError) as e:
            raise Refused(f"Could not open {what}: host `{host}` not found ({e}).") from e
        addresses = tuple(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[(host, port)] = (now + DNS_CACHE_SECONDS, addresses)
        return addresses

    async def check_url(self, url: str) -> Target:
        """Check a URL; returns where to connect, raises `Refused` with the reason."""
        _, host, port = split_host_port(url)
        return await self.check_host(host, port, url=url)

    async def check_host(self, host: str, port: int, *, url: str | None = None) -> Target:
        """Resolve `host` and check every address; returns them, raises `Refused` otherwise."""
        host = host.strip("[]").rstrip(".").lower()
        what = f"`{url}`" if url else f"`{host}:{port}`"
        if self.allow_all:  # nothing to check; Chromium resolves and reports unknown hosts
            return Target(host, port, ())
        addresses = await self._resolve(host, port, what)
        if self._explicitly_allowed(host, port):
            return Target(host, port, addresses)
        for text in addresses:
            problem = address_problem(ipaddress.ip_address(text))
            if problem is not None:
                shown = host if host == text else f"{host} ({text})"
                raise Refused(
                    f"Refused to open {what}: {shown} is a {problem} address. For safety the "
                    "browser only visits public internet hosts."
                )
        return Target(host, port, addresses)


def parse_host_port(entry: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` or a URL's host part -> (host, port or None);
    raises `ValueError` naming the entry when it is none of those."""
    text = entry.strip().lower()
    if "://" in text:  # a pasted URL: keep what a connection needs
        text = urlsplit(text).netloc.rpartition("@")[2]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            host = ""  # something after the brackets that is not a port
        port = rest[1:] or None
    elif text.count(":") == 1:  # one colon: host:port (a bare IPv6 address has several)
        host, port = text.split(":")
    else:
        host, port = text, None
    host = host.rstrip(".")
    if not host or (port is not None and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"`{entry}` is not HOST or HOST:PORT (a port is a number, 1-65535)")
    return host, int(port) if port is not None else None
