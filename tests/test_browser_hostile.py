"""Hostile pages against the real Chromium: privileges, memory, decoded size, popups, loops.

Each page is served on 127.0.0.1 by the test; one browser serves the module. Bounds on time and
memory here are generous ceilings for a denial of service, not speed checks. The figures the
security review asked for (peak memory on a gzip bomb, CPU after popups) are printed (`-s`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _support import LoopbackSite, QuietHandler, peak_memory, rss_bytes, serving

from harmony_agent.tools.base import ToolCall, ToolError
from harmony_agent.tools.browser import BrowserTool, FetchError, PageStack, find_chromium
from harmony_agent.tools.browser.download import DownloadTooLarge, download

try:
    find_chromium()
except FetchError as e:
    if os.environ.get("CI"):
        raise RuntimeError(f"Chromium is missing in CI: {e}") from e
    pytest.skip("no Chromium executable", allow_module_level=True)

MiB = 1 << 20
PAGE_LIMIT = 5 * MiB
MEMORY_LIMIT = 1024 * MiB
BOMB_BYTES = 200 * MiB  # decoded; about 400 KB on the wire
PDF_BOMB_BYTES = 160 * MiB  # decoded zeros; about 160 KB on the wire
HOG_BYTES = 3072 * MiB  # what the memory hog allocates at most (it stops there, limit or not)


def html(title: str, body: str) -> str:
    return f"<!doctype html><html><head><title>{title}</title></head><body>{body}</body></html>"


def gzip_bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    chunk = b"<div>bomb</div>" * (MiB // 15)
    parts = [compressor.compress(b"<!doctype html><title>Bomb</title>")]
    parts += [compressor.compress(chunk) for _ in range(BOMB_BYTES // len(chunk))]
    return b"".join([*parts, compressor.flush()])


def pdf_gzip_bomb() -> bytes:
    """A "PDF" that is mostly zeros, gzipped: Chromium's viewer hides PDFs, so the tool fetches
    these bytes itself, outside the browser's memory group."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    parts = [compressor.compress(b"%PDF-1.4\n")]
    parts += [compressor.compress(zeros) for _ in range(PDF_BOMB_BYTES // MiB)]
    return b"".join([*parts, compressor.flush()])


PAGES: dict[str, tuple[int, dict[str, str], bytes]] = {
    "/": (200, {"Content-Type": "text/html"}, html("Home", "<p>A normal page.</p>").encode()),
    "/redirect-loop": (302, {"Location": "/redirect-loop"}, b""),
    "/refresh-loop": (
        200,
        {"Content-Type": "text/html"},
        html(
            "Loop", "<meta http-equiv='refresh' content='0; url=/refresh-loop'><p>again</p>"
        ).encode(),
    ),
    "/memory-hog": (
        200,
        {"Content-Type": "text/html"},
        html(
            "Hog",
            "<p id='out'>start</p><script>const kept = []; let total = 0;"
            f"while (total < {HOG_BYTES}) {{ kept.push(new Uint8Array(64 << 20).fill(7));"
            " total += 64 << 20; }"
            "document.getElementById('out').textContent = 'allocated ' + (total >> 20) + ' MB';"
            "</script>",
        ).encode(),
    ),
    "/popups": (
        200,
        {"Content-Type": "text/html"},
        html(
            "Popups",
            "<p>opened popups</p><script>for (let i = 0; i < 200; i++) window.open('/busy?' + i);"
            "</script>",
        ).encode(),
    ),
    "/busy": (
        200,
        {"Content-Type": "text/html"},
        html(
            "Busy",
            "<p>busy</p><script>setInterval(() => { const t = Date.now();"
            " while (Date.now() - t < 50) {} }, 0);</script>",
        ).encode(),
    ),
    "/utf8-no-charset": (
        200,
        {"Content-Type": "text/html"},  # no charset, no <meta charset>: the bytes must decide
        html("Caf\u00e9", "<p>caf\u00e9 \u3010x\u3011 \u2192 na\u00efve</p>").encode("utf-8"),
    ),
    "/latin1-no-charset": (
        200,
        {"Content-Type": "text/html"},
        html("Menu", "<p>caf\u00e9 cr\u00e8me \u20ac5</p>").encode("cp1252"),
    ),
}


class Site(LoopbackSite):
    def __init__(self) -> None:
        super().__init__(Handler)
        self.bomb = gzip_bomb()
        self.pdf_bomb = pdf_gzip_bomb()


class Handler(QuietHandler):
    server: Site

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/gzip-bomb":
            status, headers, body = 200, {"Content-Type": "text/html"}, self.server.bomb
            headers = {**headers, "Content-Encoding": "gzip"}
        elif path == "/pdf-bomb.pdf":
            status, body = 200, self.server.pdf_bomb
            headers = {"Content-Type": "application/pdf", "Content-Encoding": "gzip"}
        else:
            status, headers, body = PAGES.get(path, (404, {}, b"no such page"))
        self.reply(status, headers, body)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    server = Site()
    with serving(server):
        yield server


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def tool(site, loop) -> Iterator[BrowserTool]:
    tool = BrowserTool(
        allow_private_network=[site.url.removeprefix("http://")],
        search_backend=None,
        load_timeout=20.0,
        max_page_bytes=PAGE_LIMIT,
        browser_memory_bytes=MEMORY_LIMIT,
    )
    yield tool
    loop.run_until_complete(tool.aclose())


@pytest.fixture
def call(loop, tool) -> Callable[..., str]:
    tool.stack = PageStack()  # each test starts with no pages open

    def call(method: str, **arguments: Any) -> str:
        call = ToolCall(f"browser.{method}", json.dumps(arguments), "analysis")
        return loop.run_until_complete(tool.call(call))

    return call


def assert_normal_page_opens(call: Callable[..., str], site: Site) -> None:
    assert "A normal page." in call("open", id=f"{site.url}/")


# -- the process tree ------------------------------------------------------------------------


def descendants(root: int) -> list[int]:
    """Every live process below `root` (Chromium's crash handlers re-parent to init: the memory
    group, where there is one, still holds them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def chromium_processes(tool: BrowserTool) -> list[int]:
    pids = set(descendants(os.getpid()))
    if tool.chromium.cgroup is not None:
        pids |= tool.chromium.cgroup.pids()
    result = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"chrom" in cmdline.split(b"\0")[0]:
            result.append(pid)
    return result


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone: it burns nothing any more
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def test_chromium_runs_unprivileged_with_its_sandbox(tool, call, site):
    assert_normal_page_opens(call, site)
    pids = chromium_processes(tool)
    assert pids, "no Chromium process found"
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert "0" not in uids, f"process {pid} runs as root: {uids}"
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--no-sandbox" not in cmdline
    renderers = [
        pid for pid in pids if b"--type=renderer" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    for pid in renderers:  # Chromium's own sandbox is really on: seccomp filter mode
        assert "Seccomp:\t2" in Path(f"/proc/{pid}/status").read_text()


# -- popups and loops --------------------------------------------------------------------------


def test_popups_are_closed_and_burn_nothing_after_the_call(tool, call, site, loop):
    assert "opened popups" in call("open", id=f"{site.url}/popups")
    context = tool.chromium._context  # what a call leaves behind: its own page, parked
    assert context is None or [page.url for page in context.pages] in ([], ["about:blank"])
    pids = chromium_processes(tool)
    before = {pid: cpu_seconds([pid]) for pid in pids}
    loop.run_until_complete(asyncio.sleep(1.0))  # Playwright's events keep flowing meanwhile
    burnt = {pid: cpu_seconds([pid]) - seconds for pid, seconds in before.items()}
    print(f"\nChromium CPU in the second after a 200-popup page: {sum(burnt.values()):.2f} s")
    # A busy page would keep a process at a full core; a just-launched browser does some
    # work of its own for a second or two, hence no tighter bound.
    assert max(burnt.values()) < 0.5 and sum(burnt.values()) < 1.0
    assert_normal_page_opens(call, site)


@pytest.mark.parametrize("path", ["/redirect-loop", "/refresh-loop"])
def test_a_looping_page_does_not_wedge_the_browser(tool, call, site, path):
    try:
        call("open", id=f"{site.url}{path}")
    except ToolError as e:
        assert "interrupted" not in str(e)
    for _ in range(2):
        assert_normal_page_opens(call, site)


# -- encodings -----------------------------------------------------------------------------


def test_undeclared_utf8_is_read_as_utf8(tool, call, site):
    view = call("open", id=f"{site.url}/utf8-no-charset")
    assert view.startswith(f"[0] Caf\u00e9 ({site.url}/utf8-no-charset)")
    assert "caf\u00e9 \u3016x\u3017 \u2192 na\u00efve" in view
    source = call("open", id=f"{site.url}/utf8-no-charset", view_source=True)
    assert "caf\u00e9 \u3016x\u3017" in source


def test_undeclared_windows_1252_is_still_read(tool, call, site):
    assert "caf\u00e9 cr\u00e8me \u20ac5" in call("open", id=f"{site.url}/latin1-no-charset")


# -- memory and size ---------------------------------------------------------------------------


def needs_memory_group(tool: BrowserTool) -> None:
    if tool.chromium.cgroup is None or "memory" not in tool.chromium.cgroup.dirs:
        pytest.skip("no memory cgroup here: Chromium runs without a memory limit")


def test_gzip_bomb_is_refused_by_decoded_size(tool, call, site):
    assert_normal_page_opens(call, site)
    group = tool.chromium.cgroup
    memory = group.dirs.get("memory") if group is not None else None
    if memory is not None:
        (memory / "memory.max_usage_in_bytes").write_text("0")  # the peak from here on
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"too large \(larger than 5 MB once decoded\)"):
        call("open", id=f"{site.url}/gzip-bomb")
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"the bomb took {elapsed:.1f} s to refuse"
    if memory is not None:
        peak = int((memory / "memory.max_usage_in_bytes").read_text())
        print(f"\nChromium peak memory on a {BOMB_BYTES >> 20} MB gzip bomb: {peak / MiB:.0f} MiB")
        assert peak < MEMORY_LIMIT
    assert_normal_page_opens(call, site)


def test_page_memory_is_limited_and_the_next_call_works(tool, call, site):
    needs_memory_group(tool)
    with pytest.raises(ToolError, match="more memory than") as raised:
        call("open", id=f"{site.url}/memory-hog")
    print(f"\nmemory hog: {raised.value}")
    assert_normal_page_opens(call, site)


def playwright_drivers() -> list[int]:
    """Playwright's Node driver: a host process (root, where the host is), outside Chromium's
    memory group."""
    found = []
    for pid in descendants(os.getpid()):
        try:
            if b"run-driver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def test_pdf_gzip_bomb_is_refused_without_host_memory(tool, call, site):
    assert_normal_page_opens(call, site)
    drivers = playwright_drivers()
    host = ["self", *drivers]  # this process and the driver: what the host pays for

    def sample() -> int:
        return sum(rss_bytes(pid) for pid in host)

    started = time.monotonic()
    with peak_memory(sample) as memory:
        with pytest.raises(ToolError, match=r"too large \(larger than 5 MB once decoded\)"):
            call("open", id=f"{site.url}/pdf-bomb.pdf")
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # whatever is still decoding in the background shows up meanwhile
    grown = memory.grown_mib
    print(
        f"\nhost RSS growth on a {PDF_BOMB_BYTES >> 20} MB gzipped PDF: {grown:.0f} MiB"
        f" (this process and {len(drivers)} Playwright driver(s)), refused in {elapsed:.1f} s"
    )
    assert elapsed < 15, f"the bomb took {elapsed:.1f} s to refuse"
    assert grown < 100, f"the host grew by {grown:.0f} MiB"
    assert_normal_page_opens(call, site)


def test_the_host_download_itself_stops_at_the_decoded_limit(site):
    # Without the browser in the way (its own load of the PDF may be refused first): the
    # host's download reads and decodes no more than the limit, however the server compresses.
    started = time.monotonic()
    with pytest.raises(DownloadTooLarge):
        download(f"{site.url}/pdf-bomb.pdf", proxy=None, max_bytes=PAGE_LIMIT, timeout=10)
    assert time.monotonic() - started < 5
    assert (
        download(f"{site.url}/", proxy=None, max_bytes=PAGE_LIMIT, timeout=10).body == PAGES["/"][2]
    )


def test_a_server_dripping_bytes_cannot_outlast_the_download_timeout() -> None:
    # Headers, then one byte every 0.2 s: each recv would restart a plain socket timeout.
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\n\r\n")
            while not stop.wait(0.2):
                try:
                    conn.sendall(b"%")
                except OSError:
                    return

    dripper = threading.Thread(target=drip)
    dripper.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/slow.pdf"
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            download(url, proxy=None, max_bytes=PAGE_LIMIT, timeout=1.0)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        dripper.join()
        server.close()
    assert elapsed < 2.0, f"the download ran {elapsed:.1f} s past a 1 s timeout"
