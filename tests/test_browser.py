"""BrowserTool in the real system Chromium, against pages served on 127.0.0.1.

One browser serves the whole module (a launch costs ~0.5 s); each test starts with an empty page
stack. Skipped where Playwright or Chromium is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import zlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from _support import LoopbackSite, QuietHandler, serving

from harmony_agent.tools.base import ToolCall, ToolError
from harmony_agent.tools.browser import (
    BrowserTool,
    FetchError,
    LocalSearchBackend,
    PageStack,
    find_chromium,
)

try:
    find_chromium()
except FetchError as e:
    if os.environ.get("CI"):  # CI installs chromium: a skip there would hide a broken install
        raise RuntimeError(f"Chromium is missing in CI: {e}") from e
    pytest.skip("no Chromium executable", allow_module_level=True)

T = TypeVar("T")


# -- the sites -----------------------------------------------------------------------------


def html(title: str, body: str) -> str:
    return f"<!doctype html><html><head><title>{title}</title></head><body>{body}</body></html>"


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF showing `text`, with a correct cross-reference table."""
    stream = zlib.compress(f"BT /F1 24 Tf 72 700 Td ({text}) Tj ET".encode())
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def site_pages(other: int) -> dict[str, tuple[int, str, bytes | str]]:
    """path -> (status, content type, body) for the main site; `other` is the forbidden port."""
    far = f"http://127.0.0.1:{other}"
    long_body = "".join(
        f"<p>Paragraph {i}: {'the needle is here' if i == 150 else 'plain filler words'}.</p>"
        for i in range(300)
    )
    return {
        "/": (
            200,
            "text/html",
            html(
                "Home",
                "<style>body { color: red } .modal { display: none }</style>"
                "<script>var secretVariable = 42;</script>"
                "<div class='modal'>Hidden dialog text</div>"
                "<h1>Welcome home</h1><p>Read <a href='/long'>the long page</a>, "
                "<a href='https://example.org/about'>an external page</a> or "
                "<a href='mailto:me@example.org'>mail me</a>.</p>"
                "<img src='/logo.png' alt='Site logo'><ul><li>first item</li><li>second</li></ul>"
                "<div id='js'></div><script>document.getElementById('js').textContent ="
                " 'Rendered by ' + 'JavaScript';</script>",
            ),
        ),
        "/long": (200, "text/html", html("Long page", long_body)),
        "/late": (
            200,
            "text/html",
            html(
                "Late",
                "<p id='late'>loading</p><script>window.addEventListener('load', () =>"
                " fetch('/data.json').then(r => r.json()).then(d =>"
                " { document.getElementById('late').textContent = d.message; }));</script>",
            ),
        ),
        "/data.json": (200, "application/json", json.dumps({"message": "fetched after load"})),
        "/text": (200, "text/plain; charset=utf-8", "Plain text file.\n\nSecond paragraph 【x】."),
        "/doc.pdf": (200, "application/pdf", tiny_pdf("Hello from a PDF")),
        "/hang": (
            200,
            "text/html",
            html("Hang", "<p>text</p><script>onload = () => { while (true) {} };</script>"),
        ),
        "/attachment": (200, "text/plain", "Notes served as a download."),
        "/missing": (404, "text/html", html("Not found", "<p>no such page</p>")),
        "/broken": (500, "text/html", html("Error", "<p>server error</p>")),
        "/redirect-here": (302, "/long", ""),
        "/redirect-other": (302, f"{far}/secret", ""),
        "/embeds-other": (
            200,
            "text/html",
            html(
                "Embeds",
                f"<p>own content</p><img src='{far}/pixel.png' alt='far image'>"
                f"<script src='{far}/script.js'></script><iframe src='{far}/frame'></iframe>"
                f"<p id='f'>no fetch</p><script>fetch('{far}/api').then(r => r.text()).then(t =>"
                " { document.getElementById('f').textContent = t; }).catch(() =>"
                " { document.getElementById('f').textContent = 'fetch failed'; });"
                f"new WebSocket('ws://127.0.0.1:{other}/socket');</script>",
            ),
        ),
        "/framed": (
            200,
            "text/html",
            html(
                "Outer",
                "<p>before the frame</p><iframe src='/docs/frame'></iframe><p>after the frame</p>"
                "<iframe src='/docs/frame' style='display: none'></iframe>",
            ),
        ),
        "/docs/frame": (
            200,
            "text/html",
            html(
                "Inner",
                "<p>inside the frame</p><a href='page'>a link in the frame</a>"
                "<iframe srcdoc='<p>nested srcdoc text</p>'></iframe>",
            ),
        ),
        "/docs/page": (200, "text/html", html("Docs page", "<p>reached from the frame</p>")),
        "/remember": (200, "text/html", html("Remember", "<script>document.cookie = "
                                             "'seen=yes; max-age=3600'</script><p>noted</p>")),
        "/recall": (200, "text/html", html("Recall", "<p id=c></p><script>document."
                                           "getElementById('c').textContent = 'cookie:' + "
                                           "document.cookie</script>")),
        "/goes-to-file": (
            200,
            "text/html",
            html("Escape", "<p>start</p><script>location.href = 'file:///etc/passwd';</script>"),
        ),
    }


class Site(LoopbackSite):
    def __init__(self, pages: Callable[[], dict[str, tuple[int, str, bytes | str]]]) -> None:
        super().__init__(Handler)
        self.pages = pages
        self.paths: list[str] = []


class Handler(QuietHandler):
    server: Site

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.path == "/slow":
            time.sleep(3)
        pages = self.server.pages()
        status, content_type, body = pages.get(
            self.path, (200, "text/html", html("Other", "<p>LEAKED secret content</p>"))
        )
        data = body.encode() if isinstance(body, str) else body
        headers = {"Location" if 300 <= status < 400 else "Content-Type": content_type}
        if self.path == "/attachment":
            headers["Content-Disposition"] = 'attachment; filename="notes.txt"'
        self.reply(status, headers, data)


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[Site, Site]]:
    other = Site(lambda: {})
    site = Site(lambda: site_pages(other.port))
    with serving(site, other):
        yield site, other


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def module_browser(sites, closed_port, loop) -> Iterator[BrowserTool]:
    site, _ = sites
    search = LocalSearchBackend.from_html(
        {
            f"{site.url}/long": html("Long page", "<p>needle in a haystack of filler</p>"),
            f"{site.url}/": html("Home", "<p>Welcome home, a page about nothing</p>"),
        }
    )
    # Only the site's port (and a closed one) are allowed: everything runs through the policy.
    tool = BrowserTool(
        allow_private_network=[f"127.0.0.1:{site.port}", f"127.0.0.1:{closed_port}"],
        search_backend=search,
        load_timeout=10.0,
        idle_wait=3.0,  # generous for a loaded machine: it ends as soon as the network is quiet
    )
    yield tool
    loop.run_until_complete(tool.aclose())


@pytest.fixture
def browser(module_browser) -> BrowserTool:
    module_browser.stack = PageStack()
    return module_browser


@pytest.fixture
def call(loop) -> Callable[..., str]:
    def call(tool: BrowserTool, method: str, **arguments: Any) -> str:
        recipient = f"browser.{method}"
        return run(loop, tool.call(ToolCall(recipient, json.dumps(arguments), "analysis")))

    return call


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return loop.run_until_complete(coro)


def lines_of(view: str) -> list[str]:
    return view.split("\n\n", 1)[1].split("\n")


# -- pages -----------------------------------------------------------------------------------


def test_open_url_header_lines_links_and_js(browser, call, sites):
    site, _ = sites
    view = call(browser, "open", id=f"{site.url}/")
    header, scrollbar, blank, *lines = view.split("\n")
    assert header == f"[0] Home ({site.url}/)"
    assert scrollbar == f"**viewing lines [0 - {len(lines) - 1}] of {len(lines) - 1}**"
    assert blank == ""
    assert lines[:3] == ["L0: ", f"L1: URL: {site.url}/", "L2: # Welcome home "]
    text = "\n".join(lines)
    assert "【0†the long page】" in text
    assert "【1†an external page†example.org】" in text
    assert "mail me." in text and "mailto" not in text
    assert "[Image 0: Site logo]" in text
    assert "  * first item" in text
    assert "Rendered by JavaScript" in text
    assert "secretVariable" not in text and "color: red" not in text
    assert "Hidden dialog" not in text  # hidden by a stylesheet: only the browser knows


def test_iframe_text_is_read_in_place(browser, call, sites):
    site, _ = sites
    text = call(browser, "open", id=f"{site.url}/framed")
    order = ["before the frame", "inside the frame", "nested srcdoc text", "after the frame"]
    positions = [text.find(part) for part in order]
    assert -1 not in positions and positions == sorted(positions), text
    assert text.count("inside the frame") == 1  # the hidden frame is not read
    # The frame's relative link resolves against the frame's URL, not the outer page's.
    link = text.split("†a link in the frame】")[0].rsplit("【", 1)[1]
    assert "Docs page" in call(browser, "open", id=int(link)).split("\n")[0]


def test_follow_link_scroll_and_find(browser, call, sites):
    site, _ = sites
    call(browser, "open", id=f"{site.url}/")
    view = call(browser, "open", id=0)
    assert view.startswith(f"[1] Long page ({site.url}/long)\n**viewing lines [0 - ")
    last_shown = int(view.split(" - ")[1].split("]")[0])
    total = int(view.split(" of ")[1].split("**")[0])
    assert 40 < last_shown < total  # a ~1024-token view of a longer page
    view = call(browser, "open", cursor=1, loc=500)
    assert view.startswith(f"[2] Long page ({site.url}/long)\n**viewing lines [500 - ")
    assert lines_of(view)[0].startswith("L500: ")

    found = call(browser, "find", pattern="NEEDLE")
    title = "Find results for text: `NEEDLE` in `Long page`"
    assert found.startswith(f"[3] {title} ({site.url}/long/find?pattern=NEEDLE)\n")
    match_line = int(found.split("match at L")[1].split("】")[0])
    assert lines_of(found)[:2] == [
        f"L0: # 【0†match at L{match_line}】",
        "L1: Paragraph 150: the needle is here.",
    ]
    view = call(browser, "open", id=0)  # the find page's link: back to the page, above the match
    assert view.startswith(f"[4] Long page ({site.url}/long)\n**viewing lines [{match_line - 4} - ")
    assert lines_of(view)[4] == f"L{match_line}: Paragraph 150: the needle is here."


def test_num_lines_and_bad_arguments(browser, call, sites, loop):
    site, _ = sites
    call(browser, "open", id=f"{site.url}/long")
    assert "**viewing lines [10 - 12] of" in call(browser, "open", loc=10, num_lines=3)
    with pytest.raises(ToolError, match="Invalid link id `99`"):
        call(browser, "open", id=99)
    with pytest.raises(ToolError, match=r"Cursor `7` is out of range. .*\[0 - 1\]"):
        call(browser, "open", cursor=7, loc=0)
    with pytest.raises(ToolError, match="Cannot exceed page maximum"):
        call(browser, "open", loc=100000)
    assert len(browser.stack) == 2  # the failed scroll left nothing behind
    with pytest.raises(ToolError, match="not JSON"):
        run(loop, browser.call(ToolCall("browser.open", "{id: 1")))


def test_content_rendered_after_load_is_captured(browser, call, sites):
    site, _ = sites
    assert "fetched after load" in call(browser, "open", id=f"{site.url}/late")


def test_plain_text_and_json(browser, call, sites):
    site, _ = sites
    text = call(browser, "open", id=f"{site.url}/text")
    assert lines_of(text)[2:] == ["L2: Plain text file.", "L3: ", "L4: Second paragraph 〖x〗."]
    data = call(browser, "open", id=f"{site.url}/data.json")
    assert '"message": "fetched after load"' in data


def test_pdf(browser, call, sites):
    site, _ = sites
    assert "L2: Hello from a PDF" in call(browser, "open", id=f"{site.url}/doc.pdf")


def test_downloads_are_shown_and_big_pages_refused(browser, call, sites):
    site, _ = sites
    assert "L2: Notes served as a download." in call(browser, "open", id=f"{site.url}/attachment")
    browser.chromium.max_page_bytes = 5000
    try:
        with pytest.raises(ToolError, match="too large"):
            call(browser, "open", id=f"{site.url}/long")
    finally:
        browser.chromium.max_page_bytes = 20 * 1024 * 1024


def test_view_source(browser, call, sites):
    site, _ = sites
    view = call(browser, "open", id=f"{site.url}/", view_source=True)
    assert view.startswith(f"[0] Source of Home (view-source:{site.url}/)\n")
    source = browser.stack.get().text  # whole, not wrapped
    assert "<script>var secretVariable = 42;</script>" in source
    assert "Rendered by JavaScript" not in source  # the source as served, before scripts ran


def test_redirect_on_the_same_site(browser, call, sites):
    site, _ = sites
    assert call(browser, "open", id=f"{site.url}/redirect-here").startswith(
        f"[0] Long page ({site.url}/long)"
    )


def test_http_errors_and_unreachable_hosts(browser, call, sites, closed_port):
    site, _ = sites
    with pytest.raises(ToolError, match="HTTP 404 Not Found"):
        call(browser, "open", id=f"{site.url}/missing")
    with pytest.raises(ToolError, match="HTTP 500"):
        call(browser, "open", id=f"{site.url}/broken")
    with pytest.raises(ToolError, match=r"Error fetching URL `http://127.0.0.1:\d+/`: "):
        call(browser, "open", id=f"http://127.0.0.1:{closed_port}/")
    assert len(browser.stack) == 0


def test_timeout_then_recovery(browser, call, sites):
    site, _ = sites
    browser.chromium.load_timeout = 1.0
    try:
        with pytest.raises(ToolError, match="timed out after 1 s"):
            call(browser, "open", id=f"{site.url}/slow")
    finally:
        browser.chromium.load_timeout = 10.0
    assert "Welcome home" in call(browser, "open", id=f"{site.url}/")


def test_script_blocking_the_renderer_times_out_then_recovery(browser, call, sites):
    site, _ = sites
    browser.chromium.load_timeout, browser.chromium.load_event_wait = 1.0, 0.5
    try:
        with pytest.raises(ToolError, match="timed out"):
            call(browser, "open", id=f"{site.url}/hang")
    finally:
        browser.chromium.load_timeout, browser.chromium.load_event_wait = 10.0, 5.0
    assert "Welcome home" in call(browser, "open", id=f"{site.url}/")


def test_local_search_then_open_result(browser, call, sites):
    site, _ = sites
    view = call(browser, "search", query="needle haystack")
    assert view.startswith("[0] needle haystack\n**viewing lines [0 - ")
    assert lines_of(view)[:4] == [
        "L0: ",
        "L1: URL: ",
        "L2: # Search Results",
        "L3: ",
    ]
    assert lines_of(view)[4].startswith(f"L4:   * 【0†Long page†127.0.0.1:{site.port}】 needle in")
    assert "Long page" in call(browser, "open", id=0)


def test_search_without_backend_is_explained(call, loop):
    tool = BrowserTool(search_backend=None)
    with pytest.raises(ToolError, match="no search backend"):
        call(tool, "search", query="x")


def test_citations_link_to_opened_pages(browser, call, sites):
    site, _ = sites
    call(browser, "open", id=f"{site.url}/long")
    cited = browser.cite("Filler everywhere 【0†L2-L4】.")
    (citation,) = cited.citations
    assert citation.url == f"{site.url}/long"
    assert citation.quote.startswith("Paragraph 0: plain filler words.")
    assert cited.text.startswith(f"Filler everywhere ([127.0.0.1:{site.port}]({site.url}/long#:~:")


def test_reset_forgets_the_pages_and_cookies_of_the_conversation_before(browser, call, sites, loop):
    site, _ = sites
    call(browser, "open", id=f"{site.url}/remember")
    assert "cookie:seen=yes" in call(browser, "open", id=f"{site.url}/recall")
    assert len(browser.stack) == 2
    run(loop, browser.reset())  # what Agent.reset_tools() does as a new conversation starts
    view = call(browser, "open", id=f"{site.url}/recall")
    assert view.startswith("[0]") and "seen=yes" not in view
    assert len(browser.stack) == 1


def test_tool_survives_a_new_event_loop_and_concurrent_calls(sites):
    site, _ = sites
    tool = BrowserTool(allow_private_network=[f"127.0.0.1:{site.port}"], search_backend=None)

    async def two_at_once() -> list[str]:
        return await asyncio.gather(tool.open(id=f"{site.url}/"), tool.open(id=f"{site.url}/"))

    try:
        for _ in range(2):  # each asyncio.run is a new loop; Playwright objects are per loop
            views = asyncio.run(two_at_once())  # and the first calls launch one browser
            assert all("Welcome home" in view for view in views)
    finally:
        asyncio.run(tool.aclose())


# -- the network policy ------------------------------------------------------------------------


def test_default_settings_refuse_loopback_and_file(call, sites):
    site, _ = sites
    tool = BrowserTool(search_backend=None)
    for url in (f"{site.url}/", f"http://localhost:{site.port}/"):
        with pytest.raises(ToolError, match=r"loopback address\. For safety"):
            call(tool, "open", id=url)
    with pytest.raises(ToolError, match="only opens http:// and https://"):
        call(tool, "open", id="file:///etc/passwd")
    assert not tool.chromium.started  # refused before any browser work


def test_redirect_to_a_forbidden_port_is_refused(browser, call, sites):
    site, other = sites
    with pytest.raises(ToolError, match=rf"127.0.0.1:{other.port}.*loopback"):
        call(browser, "open", id=f"{site.url}/redirect-other")
    assert other.paths == []


def test_subresources_from_a_forbidden_port_are_refused(browser, call, sites):
    site, other = sites
    view = call(browser, "open", id=f"{site.url}/embeds-other")
    assert "own content" in view
    assert "LEAKED" not in view
    assert "fetch failed" in view
    assert other.paths == []
    assert any(f"127.0.0.1:{other.port}" in refusal for refusal in browser.refusals)
    # The websocket never reaches Playwright's route: the proxy refused its tunnel.
    assert f"Refused to open `127.0.0.1:{other.port}`" in "\n".join(browser.refusals)


def test_script_navigation_to_file_is_not_followed(browser, call, sites):
    site, _ = sites
    view = call(browser, "open", id=f"{site.url}/goes-to-file")
    assert "root:" not in view


# -- through the agent -------------------------------------------------------------------------


def test_agent_calls_the_browser(sites):
    from openai_harmony import Role

    import harmony_agent.agent as agent_module
    from harmony_agent.model import ScriptedModel

    site, _ = sites
    turns = [
        "<|channel|>analysis to=browser.open<|message|>"
        + json.dumps({"id": f"{site.url}/"})
        + "<|call|>",
        "<|channel|>final<|message|>done<|return|>",
    ]
    with agent_module.Agent(
        ScriptedModel(turns), tools=[BrowserTool(allow_private_network=True, search_backend=None)]
    ) as agent:
        result = agent.run("Open the home page")
    assert result.final == "done"
    (tool_message,) = [m for m in result.messages if m.author.role == Role.TOOL]
    assert tool_message.author.name == "browser.open"
    assert tool_message.content[0].text.startswith(f"[0] Home ({site.url}/)")
