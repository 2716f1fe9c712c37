"""Search backends: which service is chosen, and each service's requests and answers over real
HTTP to stand-ins on 127.0.0.1 (the real services are out of reach in tests)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from email.message import Message

import pytest
from _support import LoopbackSite, QuietHandler, serving

from harmony_agent.tools.base import ToolCall, ToolError
from harmony_agent.tools.browser import (
    BrowserTool,
    DuckDuckGoBackend,
    ExaBackend,
    LocalDocument,
    LocalSearchBackend,
    SearchBackend,
    SearchError,
    SearxngBackend,
    YouComBackend,
    backend_from_env,
)


class Service(QuietHandler):
    """Records each request; answers with the server's `answer`: (status, JSON value or bytes)."""

    def do_GET(self) -> None:
        self.serve()

    def do_POST(self) -> None:
        self.serve()

    def serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append(Request(self.command, self.path, self.headers, body))  # type: ignore[attr-defined]
        status, answer = self.server.answer  # type: ignore[attr-defined]
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.reply(status, {"Content-Type": "application/json"}, data)


class Request:
    def __init__(self, method: str, path: str, headers: Message, body: bytes) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body


@pytest.fixture(scope="module")
def running_service() -> Iterator[LoopbackSite]:
    site = LoopbackSite(Service)
    with serving(site):
        yield site


@pytest.fixture
def service(running_service: LoopbackSite) -> LoopbackSite:
    running_service.requests = []  # type: ignore[attr-defined]
    running_service.answer = (200, {})  # type: ignore[attr-defined]
    return running_service


def search(backend: SearchBackend, query: str = "q", topn: int = 10) -> list[tuple[str, ...]]:
    return [(r.url, r.title, r.snippet) for r in asyncio.run(backend.search(query, topn))]


def failure(backend: SearchBackend) -> str:
    with pytest.raises(SearchError) as caught:
        asyncio.run(backend.search("q", 5))
    return str(caught.value)


# -- which service ---------------------------------------------------------------------------


def test_without_configuration_duckduckgo_searches():
    backend = backend_from_env({})
    assert isinstance(backend, DuckDuckGoBackend)
    assert backend.problem is None  # `ddgs` is a dependency: nothing to set up


@pytest.mark.parametrize(
    ("environ", "choice", "kind"),
    [
        ({"SEARXNG_URL": "http://s", "EXA_API_KEY": "k", "YDC_API_KEY": "k"}, None, SearxngBackend),
        ({"EXA_API_KEY": "k", "YDC_API_KEY": "k"}, None, ExaBackend),
        ({"YDC_API_KEY": "k"}, None, YouComBackend),
        ({"EXA_API_KEY": "k", "HARMONY_AGENT_SEARCH": "you"}, None, YouComBackend),
        ({"HARMONY_AGENT_SEARCH": " DuckDuckGo "}, None, DuckDuckGoBackend),
        ({"EXA_API_KEY": "k", "HARMONY_AGENT_SEARCH": "exa"}, "duckduckgo", DuckDuckGoBackend),
        ({}, "searxng", SearxngBackend),
    ],
)
def test_the_choice_then_the_configured_service(environ, choice, kind):
    assert type(backend_from_env(environ, choice=choice)) is kind


def test_an_unknown_service_is_named():
    with pytest.raises(ValueError, match=r"unknown search service 'bing' \(from \$HARMONY_AGENT_S"):
        backend_from_env({"HARMONY_AGENT_SEARCH": "bing"})


def test_duckduckgo_results_from_ddgs_hits():
    from ddgs.results import ResultsAggregator, TextResult

    # ddgs's own result objects, turned into the dicts `DDGS().text()` returns.
    hits = ResultsAggregator({"href"})
    hits.extend(
        [
            TextResult(title="Cats and dogs", href="https://d.test/pets", body="About pets"),
            TextResult(title="", href="https://e.test/", body=""),
        ]
    )
    results = DuckDuckGoBackend.parse(hits.extract_dicts())
    assert [(r.url, r.title, r.snippet) for r in results] == [
        ("https://d.test/pets", "Cats and dogs", "About pets"),
        ("https://e.test/", "https://e.test/", ""),  # no title: the URL stands in
    ]


def test_duckduckgo_failing_is_one_line():
    from ddgs import DDGS

    # The real client, its every request sent to a closed port on 127.0.0.1 as its proxy (so it
    # resolves no names either): what a machine without internet access gets.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
    message = failure(DuckDuckGoBackend(DDGS(proxy=proxy, timeout=5)))
    assert message.startswith("DuckDuckGo search failed: ") and "\n" not in message
    assert "Connection refused" in message


# -- each service over HTTP ------------------------------------------------------------------


def test_searxng(service):
    service.answer = (200, {"query": "cats & dogs", "number_of_results": 3, "results": [
        {"url": "https://a.test/", "title": "A", "content": "about a", "engine": "x"},
        {"url": "https://b.test/"},
        {"url": "https://c.test/", "title": "C"},
    ]})  # fmt: skip
    backend = backend_from_env({"SEARXNG_URL": service.url + "/"})
    assert search(backend, "cats & dogs", 2) == [
        ("https://a.test/", "A", "about a"),
        ("https://b.test/", "https://b.test/", ""),
    ]
    (request,) = service.requests
    assert (request.method, request.path) == ("GET", "/search?q=cats+%26+dogs&format=json")
    assert request.headers["Accept"] == "application/json"


def test_exa(service):
    service.answer = (200, {"requestId": "r", "results": [
        {"id": "1", "url": "https://e.test/", "title": "E", "highlights": ["h1", "h2"],
         "highlightScores": [0.9, 0.8]},
        {"id": "2", "url": "https://f.test/", "title": None, "summary": "sum"},
        {"id": "3", "url": "https://g.test/", "title": "G", "text": "text"},
    ]})  # fmt: skip
    backend = backend_from_env(
        {"HARMONY_AGENT_SEARCH": "exa", "EXA_API_KEY": "KEY", "EXA_BASE_URL": service.url}
    )
    assert search(backend, "neural nets", 3) == [
        ("https://e.test/", "E", "h1 h2"),
        ("https://f.test/", "https://f.test/", "sum"),
        ("https://g.test/", "G", "text"),
    ]
    (request,) = service.requests
    assert (request.method, request.path) == ("POST", "/search")
    assert request.headers["x-api-key"] == "KEY"
    assert request.headers["Content-Type"] == "application/json"
    body = json.loads(request.body)
    assert (body["query"], body["numResults"]) == ("neural nets", 3)
    assert "highlights" in body["contents"]


def test_youcom(service):
    service.answer = (200, {"results": {
        "web": [{"url": "https://w.test/", "title": "W", "description": "d",
                 "snippets": ["s1", "s2"]},
                {"url": "https://v.test/", "title": "V", "description": "only a description"}],
        "news": [{"url": "https://n.test/", "title": "N", "description": "news"}],
    }, "metadata": {"query": "q x"}})  # fmt: skip
    backend = backend_from_env({"YDC_API_KEY": "K", "YDC_BASE_URL": service.url})
    assert search(backend, "q x", 5) == [
        ("https://w.test/", "W", "s1 s2"),
        ("https://v.test/", "V", "only a description"),
        ("https://n.test/", "N", "news"),
    ]
    (request,) = service.requests
    assert (request.method, request.path) == ("GET", "/v1/search?query=q+x&count=5")
    assert request.headers["X-API-Key"] == "K"


def test_default_endpoints():
    assert ExaBackend("k").build_request("q", 1).url == "https://api.exa.ai/search"
    you = YouComBackend("k").build_request("q", 1).url
    assert you.startswith("https://api.ydc-index.io/v1/search?")


# -- failures: one line for the model, and for the user who reads the tool result ------------


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HARMONY_AGENT_SEARCH": "exa"}, "Exa search needs an API key: set EXA_API_KEY"),
        ({"HARMONY_AGENT_SEARCH": "you"}, "You.com search needs an API key: set YDC_API_KEY"),
        ({"HARMONY_AGENT_SEARCH": "searxng"}, "SearXNG search needs the instance's URL: set "
                                              "SEARXNG_URL"),
    ],
)  # fmt: skip
def test_a_missing_key_or_url_is_said_before_any_request(service, environ, message):
    backend = backend_from_env(
        {**environ, "EXA_BASE_URL": service.url, "YDC_BASE_URL": service.url}
    )
    assert backend.problem is not None and backend.problem.startswith(message)
    assert failure(backend) == backend.problem
    assert service.requests == []


def test_http_errors_name_the_service_status_and_what_to_check(service):
    service.answer = (401, {"error": "Invalid API key"})
    exa = ExaBackend("bad", base_url=service.url)
    assert failure(exa) == (
        f"Exa at {service.url} answered HTTP 401 Unauthorized: Invalid API key. Check EXA_API_KEY."
    )
    service.answer = (403, b"<!doctype html><title>403 Forbidden</title>")
    assert failure(SearxngBackend(service.url)) == (
        f"SearXNG at {service.url} answered HTTP 403 Forbidden. Is `json` listed under "
        "`search.formats` in the instance's settings.yml?"
    )


def test_unreachable_and_garbled_services(service):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    refused = f"SearXNG at {closed}: cannot connect (Connection refused)"
    assert failure(SearxngBackend(closed)) == refused
    service.answer = (200, b"<html>not json</html>")
    assert failure(YouComBackend("k", base_url=service.url)) == (
        f"You.com at {service.url}: the answer is not JSON: <html>not json</html>"
    )
    service.answer = (200, {"results": [{"title": "no url"}]})
    assert failure(SearxngBackend(service.url)).startswith(
        f"unexpected answer from SearXNG at {service.url}: KeyError('url')"
    )


def test_the_model_reads_results_and_errors_as_the_tool_answer(service):
    service.answer = (200, {"results": [{"url": "https://a.test/", "title": "Alpha"}]})
    tool = BrowserTool(search_backend=backend_from_env({"SEARXNG_URL": service.url}))
    call = ToolCall("browser.search", json.dumps({"query": "alpha"}), "analysis")
    view = asyncio.run(tool.call(call))
    assert view.startswith("[0] alpha") and "Alpha" in view and "a.test" in view
    service.answer = (500, {"message": "engines down"})
    with pytest.raises(ToolError) as caught:
        asyncio.run(tool.call(call))
    assert str(caught.value) == (
        f"Error during search for `alpha`: SearXNG at {service.url} answered HTTP 500 Internal "
        "Server Error: engines down."
    )


# -- offline ---------------------------------------------------------------------------------


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
