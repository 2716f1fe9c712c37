"""The network policy and the filtering proxy, without a browser."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harmony_agent.tools.browser import (
    REFUSED_HEADER,
    NetworkPolicy,
    PolicyProxy,
    Refused,
    address_problem,
    split_host_port,
)
from harmony_agent.tools.browser.policy import parse_host_port


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("224.0.0.1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_classification(address, problem):
    assert address_problem(ipaddress.ip_address(address)) == problem


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "data:text/html,hi", "chrome://settings", "ftp://x.test/", "x"]
)
def test_only_http_and_https(url):
    with pytest.raises(Refused, match="only opens http"):
        split_host_port(url)


def check(policy: NetworkPolicy, url: str) -> str:
    try:
        asyncio.run(policy.check_url(url))
    except Refused as e:
        return str(e)
    return "ok"


def test_default_policy_refuses_local_names_and_numbers():
    policy = NetworkPolicy()
    for url in (
        "http://127.0.0.1:8000/",
        "http://localhost/",
        "http://2130706433/",  # 127.0.0.1 as one number
        "http://0x7f.1/",
        "http://[::1]:80/",
        "http://169.254.169.254/latest/meta-data",
    ):
        assert "For safety the browser only visits public internet hosts" in check(policy, url)
    assert "loopback" in check(policy, "http://localhost:1/")


def test_allowed_hosts_and_ports():
    policy = NetworkPolicy(["127.0.0.1:8000", "localhost", "[::1]:9000"])
    assert check(policy, "http://127.0.0.1:8000/x") == "ok"
    assert "loopback" in check(policy, "http://127.0.0.1:8001/x")
    assert check(policy, "http://localhost:1234/") == "ok"
    assert check(policy, "http://[::1]:9000/") == "ok"
    assert "loopback" in check(policy, "http://[::1]:9001/")
    assert check(NetworkPolicy(True), "http://10.0.0.1/") == "ok"


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("Intranet.Example.", ("intranet.example", None)),
        ("[::1]:9000", ("::1", 9000)),
        ("fd00::1", ("fd00::1", None)),
        ("http://wiki.corp:8080/start", ("wiki.corp", 8080)),  # a pasted URL
        ("https://user@wiki.corp/", ("wiki.corp", None)),
    ],
)
def test_allowed_host_forms(entry, parsed):
    assert parse_host_port(entry) == parsed


@pytest.mark.parametrize("entry", ["", "host:x", "host:0", "host:65536", ":80", "[::1]x"])
def test_malformed_allowed_hosts_are_named(entry):
    with pytest.raises(ValueError, match=f"`{re.escape(entry)}` is not HOST or HOST:PORT"):
        parse_host_port(entry)


def test_unknown_host_is_reported():
    assert "not found" in check(NetworkPolicy(), "http://no-such-host.invalid/")


# -- the proxy ---------------------------------------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        body = f"hello from {self.server.server_address[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def servers() -> Iterator[list[ThreadingHTTPServer]]:
    started = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        server.paths = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


async def exchange(proxy: PolicyProxy, data: bytes, then: bytes = b"") -> bytes:
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    if then:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(then)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


def test_proxy_forwards_allowed_and_refuses_others(servers):
    allowed, other = (s.server_address[1] for s in servers)

    async def scenario() -> list[bytes]:
        proxy = PolicyProxy(NetworkPolicy([f"127.0.0.1:{allowed}"]))
        await proxy.start()
        try:
            return [
                await exchange(
                    proxy, f"GET http://127.0.0.1:{allowed}/ok HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                ),
                await exchange(
                    proxy, f"GET http://127.0.0.1:{other}/no HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                ),
                await exchange(proxy, f"CONNECT 127.0.0.1:{other} HTTP/1.1\r\n\r\n".encode()),
                await exchange(
                    proxy,
                    f"CONNECT 127.0.0.1:{allowed} HTTP/1.1\r\n\r\n".encode(),
                    then=b"GET /tunnel HTTP/1.0\r\n\r\n",
                ),
            ]
        finally:
            await proxy.close()

    ok, refused, refused_tunnel, tunnel = asyncio.run(scenario())
    assert ok.startswith(b"HTTP/1.0 200") and b"Connection: close" in ok
    assert ok.endswith(f"hello from {allowed}".encode())
    assert refused.startswith(b"HTTP/1.1 403") and REFUSED_HEADER.encode() in refused
    assert b"loopback" in refused
    assert refused_tunnel.startswith(b"HTTP/1.1 403")
    assert tunnel.endswith(f"hello from {allowed}".encode())
    assert servers[0].paths == ["/ok", "/tunnel"]  # type: ignore[attr-defined]
    assert servers[1].paths == []  # type: ignore[attr-defined]
