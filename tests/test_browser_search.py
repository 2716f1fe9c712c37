"""Search backends offline: request building and answer parsing with a fake transport."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from harmony_agent.tools.browser import (
    DuckDuckGoBackend,
    ExaBackend,
    HttpRequest,
    LocalDocument,
    LocalSearchBackend,
    SearchBackend,
    SearchError,
    SearxngBackend,
    YouComBackend,
    backend_from_env,
)


class FakeTransport:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests: list[HttpRequest] = []

    async def __call__(self, request: HttpRequest) -> Any:
        self.requests.append(request)
        return self.answer


def test_searxng_request_and_parsing():
    transport = FakeTransport(
        {
            "results": [
                {"url": "https://a.test/", "title": "A", "content": "about a"},
                {"url": "https://b.test/"},
            ]
        }
    )
    backend = SearxngBackend("http://searx.local:8888/", transport=transport)
    results = asyncio.run(backend.search("cats & dogs", 1))
    (request,) = transport.requests
    assert request.method == "GET"
    assert request.url == "http://searx.local:8888/search?q=cats+%26+dogs&format=json"
    assert [(r.url, r.title, r.snippet) for r in results] == [("https://a.test/", "A", "about a")]


def test_exa_request_and_parsing():
    transport = FakeTransport(
        {"results": [{"url": "https://e.test/", "title": "E", "summary": "sum", "text": "t"}]}
    )
    results = asyncio.run(ExaBackend("KEY", transport=transport).search("q", 3))
    (request,) = transport.requests
    assert (request.method, request.url) == ("POST", "https://api.exa.ai/search")
    assert request.headers["x-api-key"] == "KEY"
    assert json.loads(request.body or b"")["numResults"] == 3
    assert results[0].snippet == "sum"


def test_youcom_request_and_parsing():
    transport = FakeTransport(
        {
            "results": {
                "web": [{"url": "https://w.test/", "title": "W", "snippets": ["s1", "s2"]}],
                "news": [{"url": "https://n.test/", "title": "N", "description": "d"}],
            }
        }
    )
    results = asyncio.run(YouComBackend("K", transport=transport).search("q x", 5))
    (request,) = transport.requests
    assert request.url == "https://api.ydc-index.io/v1/search?query=q+x&count=5"
    assert request.headers["x-api-key"] == "K"
    assert [(r.url, r.snippet) for r in results] == [
        ("https://w.test/", "s1 s2"),
        ("https://n.test/", "d"),
    ]


def test_unexpected_answers_become_search_errors():
    backend = SearxngBackend("http://s", transport=FakeTransport({"results": [{"title": "x"}]}))
    with pytest.raises(SearchError, match="unexpected answer"):
        asyncio.run(backend.search("q", 3))


def test_duckduckgo_with_a_fake_client():
    class Client:
        def text(self, query: str, max_results: int) -> list[dict[str, str]]:
            assert (query, max_results) == ("q", 2)
            return [{"href": "https://d.test/", "title": "D", "body": "b"}]

    results = asyncio.run(DuckDuckGoBackend(Client()).search("q", 2))
    assert [(r.url, r.title, r.snippet) for r in results] == [("https://d.test/", "D", "b")]


def test_backend_from_env_picks_the_first_configured():
    assert isinstance(backend_from_env({"SEARXNG_URL": "http://s", "EXA_API_KEY": "k"}),
                      SearxngBackend)  # fmt: skip
    assert isinstance(backend_from_env({"EXA_API_KEY": "k"}), ExaBackend)
    assert isinstance(backend_from_env({"YDC_API_KEY": "k"}), YouComBackend)


def test_local_search_ranks_and_snippets():
    backend = LocalSearchBackend(
        [
            LocalDocument("https://x.test/cats", "Cats", "Cats purr. A cat sleeps all day."),
            LocalDocument("https://x.test/dogs", "Dogs", "Dogs bark and fetch sticks."),
            LocalDocument("https://x.test/pets", "Pets", "Cats and dogs are pets."),
        ]
    )
    assert isinstance(backend, SearchBackend)
    results = asyncio.run(backend.search("dogs bark", 10))
    assert [r.url for r in results] == ["https://x.test/dogs", "https://x.test/pets"]
    assert "bark" in results[0].snippet
    assert asyncio.run(backend.search("giraffe", 10)) == []
    assert len(asyncio.run(backend.search("cats dogs", 1))) == 1


def test_local_search_from_html():
    backend = LocalSearchBackend.from_html(
        {"https://h.test/": "<title>Home</title><p>Welcome to <b>harmony</b></p><script>x</script>"}
    )
    (result,) = asyncio.run(backend.search("harmony", 5))
    assert (result.title, result.snippet) == ("Home", "Welcome to harmony")
