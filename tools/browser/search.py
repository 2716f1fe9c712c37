"""Search backends for `browser.search`: one small protocol, several services, one offline index.

A backend turns a query into `SearchResult`s; the tool renders them as the search page. The web
services are reached through a `Transport` (an async function from request to parsed JSON), so
their request building and response parsing are testable offline with a fake transport.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlencode

from .html_text import html_to_text
from .pages import SearchResult

USER_AGENT = "harmony-agent-browser/0.1"


class SearchError(Exception):
    """A backend failed (service down, bad key, unexpected answer); the message is for the model."""


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
            return json.loads(response.read())

    try:
        return await asyncio.to_thread(send)
    except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
        raise SearchError(str(e)) from e


class _WebBackend:
    """Shared plumbing: build a request, send it, parse the answer."""

    name = "web"

    def __init__(self, transport: Transport | None = None) -> None:
        self.transport: Transport = transport or urllib_transport

    def build_request(self, query: str, topn: int) -> HttpRequest:
        raise NotImplementedError

    def parse(self, data: Any) -> list[SearchResult]:
        raise NotImplementedError

    async def search(self, query: str, topn: int) -> list[SearchResult]:
        data = await self.transport(self.build_request(query, topn))
        try:
            return self.parse(data)[:topn]
        except (KeyError, TypeError, AttributeError) as e:
            raise SearchError(f"unexpected answer from {type(self).__name__}: {e!r}") from e


class SearxngBackend(_WebBackend):
    """A SearXNG instance's JSON API (`format=json` must be enabled in its settings)."""

    def __init__(self, base_url: str, transport: Transport | None = None) -> None:
        super().__init__(transport)
        self.base_url = base_url.rstrip("/")

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
    """Exa's search API (`EXA_API_KEY`)."""

    endpoint = "https://api.exa.ai/search"

    def __init__(self, api_key: str, transport: Transport | None = None) -> None:
        super().__init__(transport)
        self.api_key = api_key

    def build_request(self, query: str, topn: int) -> HttpRequest:
        payload = {"query": query, "numResults": topn, "contents": {"summary": True}}
        return HttpRequest(
            "POST",
            self.endpoint,
            {
                "x-api-key": self.api_key,
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            },
            json.dumps(payload).encode(),
        )

    def parse(self, data: Any) -> list[SearchResult]:
        return [
            SearchResult(
                r["url"], r.get("title") or r["url"], r.get("summary") or r.get("text") or ""
            )
            for r in data.get("results", [])
        ]


class YouComBackend(_WebBackend):
    """You.com's search API (`YDC_API_KEY`): web hits, then news hits."""

    endpoint = "https://api.ydc-index.io/v1/search"

    def __init__(self, api_key: str, transport: Transport | None = None) -> None:
        super().__init__(transport)
        self.api_key = api_key

    def build_request(self, query: str, topn: int) -> HttpRequest:
        params = urlencode({"query": query, "count": topn})
        return HttpRequest(
            "GET",
            f"{self.endpoint}?{params}",
            {"x-api-key": self.api_key, "User-Agent": USER_AGENT},
        )

    def parse(self, data: Any) -> list[SearchResult]:
        results = data.get("results", {})
        hits = [
            SearchResult(r["url"], r.get("title") or r["url"], " ".join(r.get("snippets") or []))
            for r in results.get("web", [])
        ]
        hits += [
            SearchResult(r["url"], r.get("title") or r["url"], r.get("description") or "")
            for r in results.get("news", [])
        ]
        return hits


class DuckDuckGoBackend:
    """DuckDuckGo through the `ddgs` package (no key; scrapes, so it may be rate limited)."""

    name = "web"

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @staticmethod
    def parse(hits: Iterable[dict[str, Any]]) -> list[SearchResult]:
        return [
            SearchResult(h["href"], h.get("title") or h["href"], h.get("body") or "") for h in hits
        ]

    async def search(self, query: str, topn: int) -> list[SearchResult]:
        client = self._client
        if client is None:
            try:
                from ddgs import DDGS  # optional: only when this backend is used
            except ImportError as e:
                raise SearchError("the `ddgs` package is not installed") from e
            client = DDGS()
        try:
            hits = await asyncio.to_thread(client.text, query, max_results=topn)
        except Exception as e:  # ddgs raises its own exception types for network trouble
            raise SearchError(f"DuckDuckGo search failed: {e}") from e
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


def backend_from_env(environ: dict[str, str] | None = None) -> SearchBackend | None:
    """The first configured backend: `SEARXNG_URL`, `EXA_API_KEY`, `YDC_API_KEY`, then
    DuckDuckGo when `ddgs` is installed; None when there is none."""
    env = os.environ if environ is None else environ
    if url := env.get("SEARXNG_URL"):
        return SearxngBackend(url)
    if key := env.get("EXA_API_KEY"):
        return ExaBackend(key)
    if key := env.get("YDC_API_KEY"):
        return YouComBackend(key)
    try:
        import ddgs  # noqa: F401 - only probing whether it is installed
    except ImportError:
        return None
    return DuckDuckGoBackend()
