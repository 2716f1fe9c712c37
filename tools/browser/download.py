"""Fetch a document's bytes from the host, bounded by decoded size, through the policy proxy.

Why this exists: Chromium's PDF viewer hides the bytes of a PDF (and an attachment is not
loaded at all), so the tool fetches those documents itself. Playwright's request client would
do it in its Node driver, a host process (root, where the host is) outside Chromium's memory
group, which decodes gzip, deflate and brotli with no bound on the size: a few MB of gzip bomb
would take gigabytes of the host's memory. Here the download asks for no compression, reads at
most `max_bytes + 1` raw bytes and, when a server compresses anyway, decodes gzip or deflate
with a bound on the output, so neither raw nor decoded bytes ever exceed `max_bytes + 1`.

Every hop goes through `PolicyProxy` when there is one (plain requests for http, CONNECT for
https), so the policy and its refusal header apply exactly as they do for Chromium. The calls
block: run `download` in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from .proxy import REFUSED_HEADER

MAX_REDIRECTS = 10
_CHUNK = 64 * 1024
_MAX_CONNECT_HEAD = 64 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}
_URL_SAFE = "/:?#[]@!$&'()*+,;=%~"  # leave what a URL means alone, quote the rest


class DownloadError(Exception):
    """The download failed; the message says why, in words for the model."""


class DownloadRefused(DownloadError):
    """The policy proxy refused a hop; the message is its `REFUSED_HEADER` value."""


class DownloadTooLarge(DownloadError):
    """The document is larger than `max_bytes`, raw or once decoded."""


class DownloadHTTPError(DownloadError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.reason = reason


@dataclass
class Downloaded:
    url: str
    """The final URL, after redirects."""
    status: int
    content_type: str
    """The media type, lower case, without parameters."""
    body: bytes


def download(
    url: str,
    *,
    proxy: str | None,
    max_bytes: int,
    timeout: float,
    max_redirects: int = MAX_REDIRECTS,
    cancelled: threading.Event | None = None,
) -> Downloaded:
    """GET `url` (http or https) through the proxy at `proxy` (`http://host:port`; None: direct),
    following at most `max_redirects` redirects, all within `timeout` seconds.

    Raises `DownloadRefused`, `DownloadTooLarge`, `DownloadHTTPError` (status >= 400),
    `TimeoutError` or `DownloadError`. Setting `cancelled` stops it at once.
    """
    deadline = time.monotonic() + timeout
    watchdog = _Watchdog(deadline, cancelled)
    try:
        fetched = _follow(url, proxy, max_bytes, deadline, max_redirects, cancelled, watchdog.track)
        # A socket the watchdog shut reads as the end of the body: that body is cut short.
        if (verdict := watchdog.verdict()) is not None:
            raise verdict
        return fetched
    except (DownloadError, TimeoutError) as e:
        raise watchdog.verdict() or e from None
    except ssl.SSLCertVerificationError as e:
        raise DownloadError(f"TLS certificate not trusted ({e.verify_message})") from e
    except (OSError, http.client.HTTPException, ValueError) as e:
        if (verdict := watchdog.verdict()) is not None:
            raise verdict from None
        raise DownloadError(f"the connection failed ({type(e).__name__}: {e})") from e
    finally:
        watchdog.stop()


class _Watchdog:
    """Shuts the download's sockets at the deadline, or when `cancelled` is set.

    A socket timeout starts again with every `recv`, so a server that sends a byte now and then
    would keep a read going far past any per-read timeout; this ends it on time."""

    def __init__(self, deadline: float, cancelled: threading.Event | None) -> None:
        self.deadline = deadline
        self.cancelled = cancelled
        self.fired: str | None = None
        self._sockets: list[socket.socket] = []
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, daemon=True).start()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def stop(self) -> None:
        self._stopped.set()

    def verdict(self) -> BaseException | None:
        if self.fired == "deadline":
            return TimeoutError("the download timed out")
        if self.fired == "cancelled":
            return DownloadError("cancelled")
        return None

    def _watch(self) -> None:
        while not self._stopped.wait(0.05):
            if self.cancelled is not None and self.cancelled.is_set():
                self.fired = "cancelled"
            elif time.monotonic() >= self.deadline:
                self.fired = "deadline"
            else:
                continue
            with self._lock:
                for sock in self._sockets:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            return


def _follow(
    url: str,
    proxy: str | None,
    max_bytes: int,
    deadline: float,
    max_redirects: int,
    cancelled: threading.Event | None,
    track: Callable[[socket.socket], None],
) -> Downloaded:
    for _ in range(max_redirects + 1):
        response, connection = _request(url, proxy, deadline, track)
        try:
            if (refused := response.getheader(REFUSED_HEADER)) is not None:
                raise DownloadRefused(refused)
            location = response.getheader("Location")
            if response.status in _REDIRECTS and location:
                url = urljoin(url, location.strip())
                if urlsplit(url).scheme.lower() not in ("http", "https"):
                    raise DownloadError(f"redirected to `{url[:200]}`, not an http(s) URL")
                continue
            if response.status >= 400:
                raise DownloadHTTPError(response.status, response.reason)
            media = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            body = _read_body(response, connection, max_bytes, deadline, cancelled)
            return Downloaded(url, response.status, media, body)
        finally:
            connection.close()
    raise DownloadError("too many redirects")


class _Connection(http.client.HTTPConnection):
    """An HTTP connection on a socket made elsewhere (through the proxy, maybe with TLS)."""

    def __init__(self, host: str, sock: socket.socket, timeout: float) -> None:
        super().__init__(host, timeout=timeout)
        self.sock = sock

    def connect(self) -> None:  # the socket is connected already
        pass


def _request(
    url: str, proxy: str | None, deadline: float, track: Callable[[socket.socket], None]
) -> tuple[http.client.HTTPResponse, _Connection]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"`{url[:200]}` is not an http(s) URL")
    host = parts.hostname
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as e:
        raise DownloadError(f"bad port in `{url[:200]}`") from e
    netloc = _host_header(host, port, scheme)
    path = quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_URL_SAFE)

    if proxy is not None:
        proxy_parts = urlsplit(proxy)
        address = (proxy_parts.hostname or "127.0.0.1", proxy_parts.port or 80)
    else:
        address = (host, port)
    sock = _connect(address, deadline)
    track(sock)
    try:
        if scheme == "https":
            if proxy is not None:
                _tunnel(sock, netloc, deadline)
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            track(sock)  # the TLS socket took the descriptor over
        elif proxy is not None:
            path = f"http://{netloc}{path}"  # a plain request to a proxy names the whole URL
        connection = _Connection(netloc, sock, _remaining(deadline))
        connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", netloc)
        connection.putheader("Accept-Encoding", "identity")
        connection.putheader("Accept", "*/*")
        connection.putheader("Connection", "close")
        connection.endheaders()
        return connection.getresponse(), connection
    except BaseException:
        sock.close()
        raise


def _host_header(host: str, port: int, scheme: str) -> str:
    try:
        name = host.encode("idna").decode("ascii")
    except UnicodeError:
        name = host
    if ":" in name:
        name = f"[{name}]"  # an IPv6 address
    default = 443 if scheme == "https" else 80
    return name if port == default else f"{name}:{port}"


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the download timed out")
    return left


def _connect(address: tuple[str, int], deadline: float) -> socket.socket:
    try:
        return socket.create_connection(address, timeout=_remaining(deadline))
    except TimeoutError:
        raise
    except OSError as e:
        raise DownloadError(f"could not connect ({e.strerror or e})") from e


def _tunnel(sock: socket.socket, netloc: str, deadline: float) -> None:
    """Ask the proxy for a tunnel to `netloc`; a refusal raises with the proxy's reason."""
    sock.sendall(f"CONNECT {netloc} HTTP/1.1\r\nHost: {netloc}\r\n\r\n".encode("ascii"))
    head = b""
    while b"\r\n\r\n" not in head:  # byte by byte: what follows the head belongs to TLS
        sock.settimeout(_remaining(deadline))
        byte = sock.recv(1)
        if not byte or len(head) > _MAX_CONNECT_HEAD:
            raise DownloadError("could not connect (the proxy closed the connection)")
        head += byte
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = status_line.split(" ", 2)
    if len(fields) >= 2 and fields[1] == "200":
        return
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip().lower() == REFUSED_HEADER.lower():
            raise DownloadRefused(value.strip())
    raise DownloadError("could not connect")


def _read_body(
    response: http.client.HTTPResponse,
    connection: _Connection,
    max_bytes: int,
    deadline: float,
    cancelled: threading.Event | None,
) -> bytes:
    encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
    decoder = _decoder(encoding)
    declared = response.getheader("Content-Length")
    if decoder is None and (declared or "").strip().isdigit() and int(declared or 0) > max_bytes:
        raise DownloadTooLarge(f"{(declared or '').strip()} bytes")  # said so at once
    raw_total = 0
    out = bytearray()
    while True:
        if cancelled is not None and cancelled.is_set():
            raise DownloadError("cancelled")
        if connection.sock is not None:
            connection.sock.settimeout(_remaining(deadline))
        chunk = response.read(min(_CHUNK, max_bytes + 1 - raw_total))
        if not chunk:
            break
        raw_total += len(chunk)
        if raw_total > max_bytes:
            raise DownloadTooLarge("raw bytes")
        if decoder is None:
            out += chunk
            continue
        data = chunk
        while data and not decoder.eof:
            try:
                out += decoder.decompress(data, max_bytes + 1 - len(out))
            except zlib.error as e:
                raise DownloadError(f"the {encoding} data is corrupt ({e})") from e
            if len(out) > max_bytes:
                raise DownloadTooLarge("decoded bytes")
            data = decoder.unconsumed_tail
        if decoder.eof:
            break  # anything after the compressed stream is not part of the document
    return bytes(out)


class _Decoder:
    """zlib's decompressor for gzip or deflate; deflate is zlib-wrapped by the standard, but
    some servers send it raw, so the first bytes decide."""

    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._inner = zlib.decompressobj(wbits)
        self._started = False

    @property
    def eof(self) -> bool:
        return self._inner.eof

    @property
    def unconsumed_tail(self) -> bytes:
        return self._inner.unconsumed_tail

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if not self._started and self._wbits == zlib.MAX_WBITS:
            self._started = True
            try:
                return self._inner.decompress(data, max_length)
            except zlib.error:
                self._inner = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate
        self._started = True
        return self._inner.decompress(data, max_length)


def _decoder(encoding: str) -> _Decoder | None:
    if encoding in ("identity", ""):
        return None
    if encoding in ("gzip", "x-gzip"):
        return _Decoder(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _Decoder(zlib.MAX_WBITS)
    raise DownloadError(
        f"the server sent the document with Content-Encoding `{encoding[:50]}`, which the "
        "browser does not decode here (only gzip and deflate)"
    )
