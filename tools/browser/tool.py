"""`BrowserTool`: harmony's built-in `browser` namespace (search, open, find) on a real Chromium.

The model sees pages as gpt-oss was trained to see them (DESIGN.md §6): a stack of pages, each
shown as numbered lines in ~1024-token views, links as `【{id}†text】`. By default only public
internet hosts can be reached, whatever the page tries (see `policy`).

    tool = BrowserTool()                                  # public web; DuckDuckGo search
    tool = BrowserTool(search_backend=LocalSearchBackend([...]))   # offline search
    tool = BrowserTool(allow_private_network=["localhost:8000"])   # plus one local server
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Iterable
from typing import Any

from openai_harmony import ToolNamespaceConfig

from ..base import BuiltinTool, ToolCall, ToolError
from .chromium import MEMORY_BYTES, Chromium, Fetched, FetchError
from .citations import CitedText, resolve_citations
from .html_text import decode_text, domain_of, html_to_text, plain_text_page, with_url_line
from .pages import (
    VIEW_TOKENS,
    Page,
    PageStack,
    TokenCounter,
    find_page,
    harmony_prefix_chars,
    render_view,
    search_page,
)
from .policy import NetworkPolicy, Refused
from .search import (
    SearchBackend,
    SearchError,
    backend_from_env,
)

_DEFAULT = object()


class BrowserTool(BuiltinTool):
    """The `browser` namespace: `browser.search`, `browser.open`, `browser.find`.

    Safety: by default every request Chromium makes (pages, redirects, subresources, scripts'
    fetches, websockets, downloads) goes through a local proxy that resolves the host, refuses
    loopback, private, link-local and other non-public addresses, and connects only to the
    addresses it checked (so DNS rebinding cannot slip past). Only http(s) URLs are opened.
    What it does NOT protect against: pages are untrusted text (prompt injection reaches the
    model), and the model can send data to any public host in a URL it opens.

    Chromium itself keeps its sandbox on. Under a root host it runs as an unprivileged uid of its
    own, in a memory cgroup of `browser_memory_bytes` (cgroup v1; without one there is no memory
    limit). No document outlives its call: popups are blocked (and closed if one opens), the page
    read is left on about:blank, and a page that failed or looped is thrown away.
    """

    name = "browser"

    def __init__(
        self,
        allow_private_network: bool | Iterable[str] = False,
        *,
        search_backend: SearchBackend | Any | None = _DEFAULT,
        executable_path: str | None = None,
        load_timeout: float = 30.0,
        idle_wait: float = 1.0,
        max_page_bytes: int = 20 * 1024 * 1024,
        max_search_results: int = 20,
        view_tokens: int = VIEW_TOKENS,
        token_counter: TokenCounter = harmony_prefix_chars,
        browser_args: Iterable[str] = (),
        browser_uid: int | None = None,
        browser_memory_bytes: int | None = MEMORY_BYTES,
    ) -> None:
        """
        Args:
            allow_private_network: False refuses loopback, private, link-local and other
                non-public addresses (for every request a page makes); a list of hosts or
                `host:port`s allows those too; True allows everything — unsafe wherever the
                machine can reach internal services.
            search_backend: what `browser.search` uses; by default `backend_from_env()`:
                DuckDuckGo (no key) unless `$HARMONY_AGENT_SEARCH`, `$SEARXNG_URL`,
                `$EXA_API_KEY` or `$YDC_API_KEY` picks another service; None disables search.
                Searches are sent from this process, not through the policy: the service is
                the user's choice.
            executable_path: Chromium to run; by default `$HARMONY_AGENT_CHROMIUM` or the first
                `chromium`/`google-chrome` on PATH.
            load_timeout: seconds a page may take to load.
            idle_wait: after the load event, seconds to wait for the network to go quiet (pages
                that fetch their content with scripts); 0 skips it.
            max_page_bytes: a page, or anything it loads, larger than this once decoded
                (a gzip bomb is small on the wire) is refused.
            max_search_results: cap on `topn`.
            view_tokens: tokens of page text per view.
            token_counter: how views are measured; the default uses the gpt-oss tokenizer,
                `approximate_prefix_chars` avoids it (about 4 characters a token).
            browser_args: extra Chromium command-line flags.
            browser_uid: the unprivileged uid (and gid) Chromium runs as when this process is
                root; None leases one no other sandbox or browser uses (`sandbox.uids`).
            browser_memory_bytes: memory of all Chromium's processes together, where a memory
                cgroup can be made (as root); a page that needs more is stopped. None: no limit.
        """
        self.policy = NetworkPolicy(allow_private_network)
        self.search_backend: SearchBackend | None = (
            backend_from_env() if search_backend is _DEFAULT else search_backend
        )
        self.chromium = Chromium(
            self.policy,
            executable_path=executable_path,
            load_timeout=load_timeout,
            idle_wait=idle_wait,
            max_page_bytes=max_page_bytes,
            extra_args=tuple(browser_args),
            user_id=browser_uid,
            memory_bytes=browser_memory_bytes,
        )
        self.max_search_results = max_search_results
        self.view_tokens = view_tokens
        self.token_counter = token_counter
        self.stack = PageStack()
        # The agent's backstop: a cold start plus a slow page, with room to spare. The tool's
        # own limits fire first and give the model a precise message.
        self.timeout = 2 * load_timeout + idle_wait + 30.0

    def namespace_config(self) -> ToolNamespaceConfig:
        return ToolNamespaceConfig.browser()

    @property
    def refusals(self) -> list[str]:
        """Requests the network policy refused so far (pages and their subresources)."""
        return self.chromium._all_refusals()

    async def reset(self) -> None:
        """A new conversation: its cursors start at 0 again, and no cookie or storage of the
        pages an earlier one opened is left."""
        self.stack = PageStack()
        await self.chromium.reset()

    async def aclose(self) -> None:
        await self.chromium.close()

    def cite(self, text: str) -> CitedText:
        """Resolve `【{cursor}†L{a}-L{b}】` citations in a final answer against the page stack."""
        return resolve_citations(text, self.stack)

    # -- dispatch ------------------------------------------------------------------------

    async def call(self, call: ToolCall) -> str:
        args = _parse_arguments(call.arguments)
        method = call.method or call.recipient.rpartition(".")[2]
        try:
            if method == "search":
                return await self.search(
                    _string(args, "query"),
                    topn=_integer(args, "topn", args.get("top_n", 10)),
                )
            if method == "open":
                return await self.open(
                    id=args.get("id", -1),
                    cursor=_integer(args, "cursor", -1),
                    loc=_integer(args, "loc", -1),
                    num_lines=_integer(args, "num_lines", -1),
                    view_source=bool(args.get("view_source", False)),
                )
            if method == "find":
                pattern = _string(args, "pattern")
                return await self.find(pattern, cursor=_integer(args, "cursor", -1))
        except (FetchError, Refused, SearchError) as e:
            raise ToolError(str(e)) from e
        except LookupError as e:  # bad cursor, no pages yet
            raise ToolError(str(e.args[0]) if e.args else str(e)) from e
        raise ToolError(f"Unknown browser function `{method}`: use search, open or find.")

    # -- the three functions -------------------------------------------------------------

    async def search(self, query: str, topn: int = 10) -> str:
        if self.search_backend is None:
            raise ToolError(
                "Search is not available: no search backend is configured. Open URLs directly "
                "with browser.open."
            )
        topn = max(1, min(topn, self.max_search_results))
        try:
            results = await self.search_backend.search(query, topn)
        except SearchError as e:
            raise ToolError(f"Error during search for `{query}`: {e}") from e
        return self._show(search_page(query, results), 0)

    async def open(
        self,
        id: int | float | str = -1,
        cursor: int = -1,
        loc: int = -1,
        num_lines: int = -1,
        view_source: bool = False,
    ) -> str:
        if isinstance(id, float) and id.is_integer():
            id = int(id)
        if isinstance(id, str) and id.strip().lstrip("-").isdigit():
            id = int(id)  # models sometimes quote link ids
        if isinstance(id, str):
            url = _normalise_url(id)
            page = await (self._view_source(url) if view_source else self._fetch(url))
            return self._show(page, max(loc, 0), num_lines)
        if not isinstance(id, int) or isinstance(id, bool):
            raise ToolError(f"`id` must be a link number or a URL, not {id!r}.")
        current = self.stack.get(cursor)
        if id < 0:  # scroll (or view the source of) a page already open
            if view_source:
                return self._show(await self._view_source(current.url), max(loc, 0), num_lines)
            return self._show(current, max(loc, 0), num_lines)
        if id not in current.links:
            raise ToolError(_bad_link_message(id, current))
        url = current.links[id]
        if current.kind == "find":  # show the searched page a few lines above the match
            page = self.stack.by_url.get(url) or await self._fetch(url)
            start = max(current.targets[id] - 4, 0) if loc < 0 else loc
            return self._show(page, start, num_lines)
        if view_source:
            return self._show(await self._view_source(url), max(loc, 0), num_lines)
        # A page already fetched is shown again as it was (as the reference tool does);
        # opening its URL directly (`id` as a string) is how the model refreshes it.
        page = self.stack.by_url.get(url) or await self._fetch(url)
        return self._show(page, max(loc, 0), num_lines)

    async def find(self, pattern: str, cursor: int = -1) -> str:
        page = self.stack.get(cursor)
        if page.kind == "find":
            raise ToolError("Cannot run `find` on a find results page: use the page's cursor.")
        if not pattern.strip():
            raise ToolError("`pattern` is empty.")
        return self._show(find_page(page, pattern), 0)

    # -- helpers -------------------------------------------------------------------------

    def _show(self, page: Page, loc: int, num_lines: int = -1) -> str:
        cursor = self.stack.push(page)
        try:
            return render_view(
                page, cursor, loc, num_lines, view_tokens=self.view_tokens, fit=self.token_counter
            )
        except ValueError as e:  # loc past the end: the page must not stay on the stack
            self.stack.pop()
            raise ToolError(str(e)) from e

    async def _fetch(self, url: str) -> Page:
        fetched = await self.chromium.fetch(url)
        return await asyncio.to_thread(_to_page, fetched)

    async def _view_source(self, url: str) -> Page:
        fetched = await self.chromium.fetch(url)
        source = fetched.source if fetched.source is not None else fetched.html
        if source is None:
            raise ToolError(f"`{url}` is not an HTML page; open it without view_source.")
        return Page(
            url=f"view-source:{fetched.url}",
            title=f"Source of {fetched.title or domain_of(fetched.url)}",
            text=with_url_line(fetched.url, plain_text_page(source)),
            kind="source",
        )


def _to_page(fetched: Fetched) -> Page:
    """Convert what Chromium returned into the model's text, whatever the content type."""
    url = fetched.url
    name = url.rstrip("/").rsplit("/", 1)[-1] or domain_of(url)
    if fetched.html is not None:
        converted = html_to_text(fetched.html, url, fetched.title)
        return Page(url, converted.title, converted.text, converted.links, source=fetched.source)
    body = fetched.body or b""
    content_type = fetched.content_type
    if content_type == "application/pdf" or body.startswith(b"%PDF-"):
        text = _pdf_text(body, url)
    elif content_type.startswith("text/") or content_type.endswith(("json", "+xml", "/xml")):
        text = decode_text(body)
        if content_type.endswith("json"):
            with contextlib.suppress(ValueError):  # malformed JSON is shown as it is
                text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    else:
        raise ToolError(f"Cannot display `{url}`: its content type `{content_type}` is not text.")
    return Page(url, name, with_url_line(url, plain_text_page(text)))


def _pdf_text(body: bytes, url: str) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError as e:
        raise ToolError(f"Cannot display the PDF `{url}`: `pypdf` is not installed.") from e
    try:
        reader = PdfReader(io.BytesIO(body))
        return "\n\n".join((p.extract_text() or "").strip() for p in reader.pages)
    except (PyPdfError, ValueError, KeyError, OSError) as e:
        raise ToolError(f"Cannot read the PDF `{url}`: {e}") from e


def _parse_arguments(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ToolError(f"Invalid arguments: not JSON ({e.msg} at character {e.pos}).") from e
    if not isinstance(value, dict):
        raise ToolError("Invalid arguments: expected a JSON object.")
    return value


def _integer(args: dict[str, Any], key: str, default: Any) -> int:
    value = args.get(key, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ToolError(f"`{key}` must be an integer, not {value!r}.")
    return value


def _string(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise ToolError(f"`{key}` is required and must be a string.")
    return value


def _normalise_url(url: str) -> str:
    url = url.strip()
    if "://" not in url and ":" not in url.split("/")[0]:
        return "https://" + url  # `example.com/page`: what a person typing it would mean
    return url


def _bad_link_message(link_id: int, page: Page) -> str:
    if not page.links:
        return f"Invalid link id `{link_id}`: the page has no links."
    return (
        f"Invalid link id `{link_id}`. Valid ids on this page: "
        f"{min(page.links)} - {max(page.links)}."
    )
