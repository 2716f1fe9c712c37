"""Search backends for `browser.search`: one small protocol, several services, one offline index.

A backend turns a query into `SearchResult`s; the tool renders them as the search page. Which
service is used comes from `backend_from_env`: DuckDuckGo through the `ddgs` package (no key)
unless SearXNG, Exa or You.com is chosen or configured. Searches are sent from this process, not
through Chromium, so the browser's network policy does not apply to them: the user chose the
service. The web services are reached through a `Transport` (an async function from request to
parsed JSON); the default one uses the standard library.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlencode, urlsplit

from .html_text import html_to_text
from .pages import SearchResult

USER_AGENT = "harmony-agent-browser/0.1"
SEARCH_ENV = "HARMONY_AGENT_SEARCH"
SEARCH_SERVICES = ("duckduckgo", "searxng", "exa", "you")
"""The names `--search` and `$HARMONY_AGENT_SEARCH` accept."""
EXA_URL = "https://api.exa.ai"
YOU_URL = "https://api.ydc-index.io"


class SearchError(Exception):
    """A backend failed (service down, bad key, unexpected answer); the message is for the model."""


class HttpStatusError(SearchError):
    """The service answered with an HTTP error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@runtime_checkable
class SearchBackend(Protocol):
    """What `BrowserTool` needs from a search service."""

    name: str
    """Shown to the model as `sources=...` in the tool description."""

    async def search(self, query: str, topn: int) -> list[SearchResult]: ...


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


Transport = Callable[[HttpRequest], Awaitable[Any]]


async def urllib_transport(request: HttpRequest, timeout: float = 20.0) -> Any:
    """Send with the standard library (in a thread: urllib blocks) and parse the JSON answer."""

    def send() -> Any:
        req = urllib.request.Request(
            request.url, data=request.body, headers=request.headers, method=request.method
        )
        with urllib.request.urlopen(req, timeout=timeout) as response:
            body = response.read()
        try:
            return json.loads(body)
        except ValueError as e:
            raise SearchError(f"the answer is not JSON: {_excerpt(body)}") from e

    try:
        return await asyncio.to_thread(send)
    except urllib.error.HTTPError as e:
        detail = _error_detail(e.read(2000))
        raise HttpStatusError(f"HTTP {e.code} {e.reason}{detail}", e.code) from e
    except urllib.error.URLError as e:  # DNS, refused, TLS: the reason is an OSError or text
        reason = getattr(e.reason, "strerror", None) or str(e.reason)
        raise SearchError(f"cannot connect ({reason})") from e
    except TimeoutError as e:
        raise SearchError(f"no answer within {timeout:g} s") from e
    except OSError as e:
        raise SearchError(str(e)) from e


def _excerpt(body: bytes, limit: int = 120) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _error_detail(body: bytes) -> str:
    """An API's own words about an error (`{"error": ...}` and the like), as ': ...' or ''."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if isinstance(value, str) and value:
                return f": {_excerpt(value.encode())}"
    text = _excerpt(body)
    return f": {text}" if text and not text.startswith("<") else ""  # HTML error pages say little


class _WebBackend:
    """Shared plumbing: build a request, send it, parse the answer, explain failures."""

    name = "web"
    service = "web search"
    """How messages name the service."""

    def __init__(self, transport: Transport | None = None) -> None:
        self.transport: Transport = transport or urllib_transport

    @property
    def problem(self) -> str | None:
        """Why this backend cannot search as configured (a missing key or URL), or None."""
        return None

    def hint(self, status: int) -> str:
        """What to check after an HTTP error `status`, as ' ...' or ''."""
        return ""

    def build_request(self, query: str, topn: int) -> HttpRequest:
        raise NotImplementedError

    def parse(self, data: Any) -> list[SearchResult]:
        raise NotImplementedError

    async def search(self, query: str, topn: int) -> list[SearchResult]:
        if self.problem is not None:
            raise SearchError(self.problem)
        request = self.build_request(query, topn)
        parts = urlsplit(request.url)
        where = f"{self.service} at {parts.scheme}://{parts.netloc}"
        try:
            data = await self.transport(request)
        except HttpStatusError as e:
            said = str(e).rstrip(".")
            raise SearchError(f"{where} answered {said}.{self.hint(e.status)}") from e
        except SearchError as e:
            raise SearchError(f"{where}: {e}") from e
        try:
            return self.parse(data)[:topn]
        except (KeyError, TypeError, AttributeError) as e:
            raise SearchError(f"unexpected answer from {where}: {e!r}") from e


class SearxngBackend(_WebBackend):
    """A SearXNG instance's JSON API (`json` must be among `search.formats` in its settings)."""

    service = "SearXNG"

    def __init__(self, base_url: str | None, transport: Transport | None = None) -> None:
        super().__init__(transport)
        self.base_url = (base_url or "").rstrip("/")

    @property
    def problem(self) -> str | None:
        if not self.base_url:
            return "SearXNG search needs the instance's URL: set SEARXNG_URL (or --searxng-url)."
        return None

    def hint(self, status: int) -> str:
        if status == 403:  # what an instance answers while its JSON format is off
            return " Is `json` listed under `search.formats` in the instance's settings.yml?"
        return ""

    def build_request(self, query: str, topn: int) -> HttpRequest:
        params = urlencode({"q": query, "format": "json"})
        return HttpRequest(
            "GET",
            f"{self.base_url}/search?{params}",
            {"Accept": "application/json", "User-Agent": USER_AGENT},
        )

    def parse(self, data: Any) -> list[SearchResult]:
        return [
            SearchResult(r["url"], r.get("title") or r["url"], r.get("content") or "")
            for r in data.get("results", [])
        ]


class ExaBackend(_WebBackend):
    """Exa's search API: `POST {base_url}/search`, the key in `x-api-key`, highlights as
    snippets."""

    service = "Exa"

    def __init__(
        self,
        api_key: str | None,
        *,
        base_url: str = EXA_URL,
        transport: Transport | None = None,
    ) -> None:
        super().__init__(transport)
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")

    @property
    def problem(self) -> str | None:
        if not self.api_key:
            return (
                "Exa search needs an API key: set EXA_API_KEY "
                "(keys at https://dashboard.exa.ai/api-keys)."
            )
        return None

    def hint(self, status: int) -> str:
        return " Check EXA_API_KEY." if status in (401, 403) else ""

    def build_request(self, query: str, topn: int) -> HttpRequest:
        # Highlights: query-relevant extracts, cheaper than a summary (an LLM call per hit).
        payload = {
            "query": query,
            "numResults": topn,
            "contents": {"highlights": {"maxCharacters": 500}},
        }
        return HttpRequest(
            "POST",
            f"{self.base_url}/search",
            {
                "x-api-key": self.api_key or "",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
            json.dumps(payload).encode(),
        )

    def parse(self, data: Any) -> list[SearchResult]:
        return [
            SearchResult(
                r["url"],
                r.get("title") or r["url"],
                " ".join(r.get("highlights") or []) or r.get("summary") or r.get("text") or "",
            )
            for r in data.get("results", [])
        ]


class YouComBackend(_WebBackend):
    """You.com's search API: `GET {base_url}/v1/search`, the key in `X-API-Key`; web hits, then
    news hits."""

    service = "You.com"

    def __init__(
        self,
        api_key: str | None,
        *,
        base_url: str = YOU_URL,
        transport: Transport | None = None,
    ) -> None:
        super().__init__(transport)
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")

    @property
    def problem(self) -> str | None:
        if not self.api_key:
            return (
                "You.com search needs an API key: set YDC_API_KEY "
                "(keys at https://you.com/platform/api-keys)."
            )
        return None

    def hint(self, status: int) -> str:
        return " Check YDC_API_KEY." if status in (401, 403) else ""

    def build_request(self, query: str, topn: int) -> HttpRequest:
        params = urlencode({"query": query, "count": topn})
        return HttpRequest(
            "GET",
            f"{self.base_url}/v1/search?{params}",
            {"X-API-Key": self.api_key or "", "Accept": "application/json",
             "User-Agent": USER_AGENT},
        )  # fmt: skip

    def parse(self, data: Any) -> list[SearchResult]:
        results = data.get("results", {})
        return [
            SearchResult(
                r["url"],
                r.get("title") or r["url"],
                " ".join(r.get("snippets") or []) or r.get("description") or "",
            )
            for r in [*results.get("web", []), *results.get("news", [])]
        ]


class DuckDuckGoBackend:
    """DuckDuckGo through the `ddgs` metasearch package: no key (it scrapes, so it may be rate
    limited)."""

    name = "web"

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def problem(self) -> str | None:
        if self._client is None and find_spec("ddgs") is None:
            return "DuckDuckGo search needs the `ddgs` package: pip install ddgs."
        return None

    @staticmethod
    def parse(hits: Iterable[Mapping[str, Any]]) -> list[SearchResult]:
        """`DDGS().text()` hits (`title`, `href`, `body`) as search results."""
        return [
            SearchResult(h["href"], h.get("title") or h["href"], h.get("body") or "") for h in hits
        ]

    async def search(self, query: str, topn: int) -> list[SearchResult]:
        if self.problem is not None:
            raise SearchError(self.problem)
        client = self._client
        if client is None:
            from ddgs import DDGS  # on first use: ~0.1 s that runs without search need not pay

            client = self._client = DDGS()
        try:
            hits = await asyncio.to_thread(client.text, query, max_results=topn)
        except Exception as e:  # ddgs raises its own types, and its HTTP client's
            reason = _excerpt(str(e).encode(), 200)  # its HTTP client's errors run long
            raise SearchError(f"DuckDuckGo search failed: {reason or type(e).__name__}") from e
        return self.parse(hits or [])[:topn]


# -- offline ---------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class LocalDocument:
    url: str
    title: str
    text: str


class LocalSearchBackend:
    """Searches a fixed set of documents in memory (BM25 ranking): offline use and tests."""

    name = "local"

    def __init__(self, documents: Iterable[LocalDocument], snippet_chars: int = 200) -> None:
        self.documents = list(documents)
        self.snippet_chars = snippet_chars
        self._terms = [Counter(_words(f"{d.title} {d.text}")) for d in self.documents]
        self._lengths = [sum(t.values()) for t in self._terms]
        self._average = sum(self._lengths) / max(len(self._lengths), 1)

    @classmethod
    def from_html(cls, pages: dict[str, str]) -> LocalSearchBackend:
        """Index HTML pages (URL -> HTML) by their converted text."""
        documents = []
        for url, source in pages.items():
            converted = html_to_text(source, url)
            body = converted.text.split("\n", 2)[2]  # drop the empty line and the URL line
            documents.append(LocalDocument(url, converted.title, body))
        return cls(documents)

    async def search(self, query: str, topn: int) -> list[SearchResult]:
        query_terms = set(_words(query))
        n = len(self.documents)
        scored = []
        for i, terms in enumerate(self._terms):
            score = 0.0
            for term in query_terms:
                tf = terms.get(term, 0)
                if not tf:
                    continue
                df = sum(1 for t in self._terms if term in t)
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                norm = 1.2 * (0.25 + 0.75 * self._lengths[i] / (self._average or 1))
                score += idf * tf * 2.2 / (tf + norm)
            if score > 0:
                scored.append((score, i))
        scored.sort(key=lambda s: (-s[0], s[1]))
        return [self._result(self.documents[i], query_terms) for _, i in scored[:topn]]

    def _result(self, doc: LocalDocument, terms: set[str]) -> SearchResult:
        flat = " ".join(doc.text.split())
        lower = flat.lower()
        hits = [p for t in terms if (p := lower.find(t)) >= 0]
        start = max(min(hits, default=0) - 40, 0)
        snippet = flat[start : start + self.snippet_chars]
        return SearchResult(doc.url, doc.title, snippet)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def backend_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    choice: str | None = None,
    searxng_url: str | None = None,
) -> SearchBackend:
    """The search service to use: `choice` (one of `SEARCH_SERVICES`), else `$HARMONY_AGENT_SEARCH`,
    else the first configured of SearXNG (`searxng_url` or `$SEARXNG_URL`), Exa (`$EXA_API_KEY`)
    and You.com (`$YDC_API_KEY`), else DuckDuckGo, which needs no key. `$EXA_BASE_URL` and
    `$YDC_BASE_URL` send those services' requests elsewhere (a gateway, a test server).

    A chosen service that lacks its key or URL is still returned: its `problem` says what is
    missing, and its searches fail with that message. An unknown name raises `ValueError`."""
    env = os.environ if environ is None else environ
    url = searxng_url or env.get("SEARXNG_URL")
    name = (choice or env.get(SEARCH_ENV) or "").strip().lower()
    if not name:
        configured = [(url, "searxng"), (env.get("EXA_API_KEY"), "exa"),
                      (env.get("YDC_API_KEY"), "you")]  # fmt: skip
        name = next((service for value, service in configured if value), "duckduckgo")
    if name == "searxng":
        return SearxngBackend(url)
    if name == "exa":
        return ExaBackend(env.get("EXA_API_KEY"), base_url=env.get("EXA_BASE_URL") or EXA_URL)
    if name == "you":
        return YouComBackend(env.get("YDC_API_KEY"), base_url=env.get("YDC_BASE_URL") or YOU_URL)
    if name == "duckduckgo":
        return DuckDuckGoBackend()
    raise ValueError(
        f"unknown search service {name!r} (from {'--search' if choice else '$' + SEARCH_ENV}): "
        f"use {', '.join(SEARCH_SERVICES)}"
    )
