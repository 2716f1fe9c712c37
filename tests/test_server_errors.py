"""Bad requests get OpenAI's error JSON with the right status, never a 500; a full server says
429; fuzzed bodies leave the server healthy."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from _support import GREETING, serving_model, token_count
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harmony_agent import ScriptedModel
from harmony_agent.encoding import harmony_encoding


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert "param" in error and "code" in error
    return error  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, httpx.Client]]:
    """One server for the tests that need no settings of their own: enough answers for every
    fuzzed body that happens to be a valid request."""
    answer = harmony_encoding().encode(GREETING, allowed_special="all")
    with serving_model(ScriptedModel([answer] * 2000)) as (url, _), httpx.Client() as http:
        yield url, http


def test_the_api_key_is_required_on_v1_but_not_for_health() -> None:
    with serving_model(ScriptedModel([GREETING]), api_key="s3cret") as (url, _):
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        assert _error(httpx.get(f"{url}/v1/models"), 401)["code"] == "invalid_api_key"
        wrong = {"Authorization": "Bearer nope"}
        _error(httpx.post(f"{url}/v1/responses", json={}, headers=wrong), 401)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in client.models.list()] == ["gpt-oss"]
        assert client.responses.create(model="gpt-oss", input="Hi").output_text == "Hello!"


def test_unknown_models_routes_and_responses_are_404(server: tuple[str, httpx.Client]) -> None:
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    assert error.value.body["param"] == "model"  # type: ignore[index]
    _error(httpx.post(f"{url}/v1/responses", json={"model": "gpt-5", "input": "x"}), 404)
    _error(httpx.get(f"{url}/v1/models/gpt-5"), 404)
    _error(httpx.get(f"{url}/v1/responses/resp_nothing"), 404)
    _error(httpx.delete(f"{url}/v1/responses/resp_nothing"), 404)
    _error(httpx.get(f"{url}/v1/completions"), 404)
    _error(httpx.get(f"{url}/v1/chat/completions"), 405)


def test_a_body_over_the_limit_is_413_even_without_a_length() -> None:
    with serving_model(ScriptedModel([]), max_request_bytes=1000) as (url, _):
        body = {"model": "gpt-oss", "input": "x" * 2000}
        _error(httpx.post(f"{url}/v1/responses", json=body), 413)

        def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to refuse it by
            yield b'{"model": "gpt-oss", "input": "'
            yield b"x" * 2000
            yield b'"}'

        _error(httpx.post(f"{url}/v1/chat/completions", content=chunks()), 413)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("responses", {"model": "gpt-oss", "input": "x", "temperature": 5}, "temperature"),
        ("responses", {"input": "x"}, "model"),
        ("responses", {"model": "gpt-oss", "input": [{"type": "function_call_output",
                                                     "call_id": "c1", "output": "x"}]},
         "input[0].call_id"),
        ("responses", {"model": "gpt-oss", "input": "x", "tools": [
            {"type": "function", "name": "has space"}]}, "tools[0].name"),
        ("responses", {"model": "gpt-oss", "input": "x", "reasoning": {"effort": "max"}},
         "reasoning.effort"),
        ("responses", {"model": "gpt-oss", "input": [{"role": "user", "content": 3}]},
         "input[0].content"),
        ("responses", {"model": "gpt-oss", "input": []}, "input"),
        ("chat/completions", {"model": "gpt-oss", "messages": [{"role": "user", "content": "x"}],
                              "n": 2}, "n"),
        ("chat/completions", {"model": "gpt-oss", "messages": [{"role": "robot"}]},
         "messages[0].role"),
        ("chat/completions", {"model": "gpt-oss", "messages": "hi"}, "messages"),
        ("chat/completions", {"model": "gpt-oss", "messages": [{"role": "user", "content": "x"}],
                              "max_tokens": 0}, "max_tokens"),
    ],
)  # fmt: skip
def test_a_bad_field_is_a_400_that_names_it(
    server: tuple[str, httpx.Client], path: str, body: dict[str, Any], param: str
) -> None:
    url, http = server
    assert _error(http.post(f"{url}/v1/{path}", json=body), 400)["param"] == param


def test_not_json_is_a_400(server: tuple[str, httpx.Client]) -> None:
    url, _ = server
    _error(httpx.post(f"{url}/v1/responses", content=b"{nope"), 400)
    _error(httpx.post(f"{url}/v1/responses", content=b"[1, 2]"), 400)
    _error(httpx.post(f"{url}/v1/responses", content=b'{"model": NaN}'), 400)
    lone = b'{"model": "gpt-oss", "input": "\\ud800"}'  # an escape JSON allows, no text
    _error(httpx.post(f"{url}/v1/responses", content=lone), 400)
    deep = b'{"model": "gpt-oss", "input": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    _error(httpx.post(f"{url}/v1/responses", content=deep), 400)


def test_a_conversation_longer_than_the_context_is_a_400() -> None:
    model = ScriptedModel([])
    model.max_context = 300  # type: ignore[attr-defined]  # as a loaded checkpoint declares it
    with serving_model(model) as (url, _):
        body = {"model": "gpt-oss", "input": "word " * 400}
        error = _error(httpx.post(f"{url}/v1/responses", json=body), 400)
    assert error["code"] == "context_length_exceeded"
    assert model.prompts == []


def test_a_full_server_answers_429_and_recovers() -> None:
    slow = "<|channel|>final<|message|>" + "word " * 40 + "<|return|>"
    model = ScriptedModel([slow, GREETING], delay=0.02)
    body = {"model": "gpt-oss", "input": "Hi"}
    with serving_model(model, max_running=1, max_waiting=0) as (url, client):
        first = threading.Thread(target=lambda: httpx.post(f"{url}/v1/responses", json=body))
        first.start()
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health").json()["running"] == 0:
            assert time.monotonic() < deadline, "the first request never started"
            time.sleep(0.01)
        refused = httpx.post(f"{url}/v1/responses", json=body)
        first.join()
        assert _error(refused, 429)["type"] == "rate_limit_error"
        assert refused.headers["retry-after"] == "1"
        assert client.responses.create(model="gpt-oss", input="Hi").output_text == "Hello!"


def _data_lines(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]


def test_a_run_that_breaks_is_reported_in_each_protocols_way() -> None:
    """Not the client's fault (here a scripted model out of turns): a failed response, a 500,
    an error in the stream; never a hung connection or a 400."""
    body = {"model": "gpt-oss", "input": "Hi"}
    chat = {"model": "gpt-oss", "messages": [{"role": "user", "content": "Hi"}]}
    with serving_model(ScriptedModel([])) as (url, client):
        failed = httpx.post(f"{url}/v1/responses", json=body).json()
        streamed = _data_lines(httpx.post(f"{url}/v1/responses", json={**body, "stream": True}))
        error = _error(httpx.post(f"{url}/v1/chat/completions", json=chat), 500)
        chunks = _data_lines(
            httpx.post(f"{url}/v1/chat/completions", json={**chat, "stream": True})
        )
        with pytest.raises(openai.APIError):
            list(
                client.chat.completions.create(
                    model="gpt-oss", messages=chat["messages"], stream=True
                )
            )  # type: ignore[arg-type]
    assert failed["status"] == "failed"
    assert "ScriptExhausted" in failed["error"]["message"]
    assert json.loads(streamed[-1])["type"] == "response.failed"
    assert error["type"] == "server_error" and "ScriptExhausted" in error["message"]
    assert "ScriptExhausted" in json.loads(chunks[-2])["error"]["message"]
    assert chunks[-1] == "[DONE]"


# -- fuzzing -------------------------------------------------------------------------------------

_odd_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "<|start|>", "<|call|>", "functions.x", "a" * 5000]),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | _odd_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_odd_text, inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
_FUNCTION = {
    "name": "get_weather",
    "description": "Weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "$defs": {"D": {"type": "string"}}},
}  # fmt: skip
_CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Oslo"}'}  # fmt: skip
_RESPONSES = [
    {"input": "Hi", "model": "gpt-oss"},
    {"stream": True, "instructions": "Be brief.", "temperature": 0.5,
     "input": [{"role": "developer", "content": "Dev."},
               {"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Hi"},
                            {"type": "input_image", "image_url": "x"}]}], "model": "gpt-oss"},
    {"tools": [{"type": "function", **_FUNCTION},
                                   {"type": "namespace", "name": "ns", "tools": [
                                       {"type": "function", "name": "f"}]},
                                   {"type": "web_search"}, {"type": "code_interpreter"}],
     "include": ["reasoning.encrypted_content"], "store": False, "reasoning": {"effort": "low"},
     "tool_choice": {"type": "function", "name": "get_weather"},
     "text": {"format": {"type": "json_schema", "name": "f", "schema": {"type": "object"}}},
     "input": [{"role": "user", "content": "Weather?"},
               {"type": "reasoning", "summary": [],
                "content": [{"type": "reasoning_text", "text": "Think."}],
                "encrypted_content": "ha1.e30.AAAA"},
               {"role": "assistant", "content": "Checking.", "phase": "commentary"}, _CALL,
               {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
               {"type": "web_search_call", "id": "ws_1", "status": "completed",
                "action": {"type": "search", "query": "x"}},
               {"type": "code_interpreter_call", "id": "ci_1", "code": "1",
                "outputs": [{"type": "logs", "logs": "1"}], "container_id": "cntr_x"},
               {"type": "compaction", "summary": "?"}], "model": "gpt-oss"},
]  # fmt: skip
_CHAT = [
    {"messages": [{"role": "user", "content": "Hi"}], "model": "gpt-oss"},
    {"stream": True, "stream_options": {"include_usage": True},
     "max_tokens": 50, "reasoning_effort": "high", "tool_choice": "required", "stop": ["a", "b"],
     "response_format": {"type": "json_schema",
                         "json_schema": {"name": "f", "schema": {"type": "object"}}},
     "tools": [{"type": "function",
                                                             "function": _FUNCTION}],
     "messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                  {"role": "assistant", "content": None, "reasoning_content": "Think.",
                   "tool_calls": [{"id": "call_1", "type": "function",
                                   "function": {"name": "get_weather", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                  {"role": "assistant", "content": "Sunny.", "reasoning": "Done."},
                  {"role": "user", "content": "Thanks"}], "model": "gpt-oss"},
]  # fmt: skip


def _places(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) of a JSON document, the document's own keys included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield node, key
            yield from _places(value)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield node, index
            yield from _places(value)


@st.composite
def _mutated(draw: st.DrawFn, bases: list[dict[str, Any]]) -> dict[str, Any]:
    """A valid request with up to three things changed: a value replaced by any JSON, a field
    or item removed, an unknown field added. Valid ones run; the others must be 4xx."""
    body = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(0, 3))):
        places = list(_places(body))
        if not places:
            break
        container, key = draw(st.sampled_from(places))
        action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if action == "replace":
            container[key] = draw(_json)
        elif action == "remove":
            del container[key]
        elif isinstance(container, dict):
            container[draw(_odd_text)] = draw(_json)
        else:
            container.insert(key, draw(_json))
    return body


_responses_bodies = _mutated(_RESPONSES)
_chat_bodies = _mutated(_CHAT)


def _check(http: httpx.Client, url: str, content: bytes | None = None, **body: Any) -> None:
    # json.dumps escapes lone surrogates, which httpx's own encoder refuses to send.
    response = http.post(url, content=json.dumps(body).encode() if content is None else content)
    assert response.status_code < 500, response.text
    event(f"status {response.status_code}")  # --hypothesis-show-statistics: how deep it got
    if response.status_code >= 400:
        _error(response, response.status_code)


_fuzzing = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_fuzzing
@given(body=_responses_bodies)
def test_fuzzed_responses_bodies_never_break_the_server(
    server: tuple[str, httpx.Client], body: dict[str, Any]
) -> None:
    url, http = server
    _check(http, f"{url}/v1/responses", **body)


@_fuzzing
@given(body=_chat_bodies)
def test_fuzzed_chat_bodies_never_break_the_server(
    server: tuple[str, httpx.Client], body: dict[str, Any]
) -> None:
    url, http = server
    _check(http, f"{url}/v1/chat/completions", **body)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(raw=st.binary(max_size=64))
def test_fuzzed_bytes_never_break_the_server(server: tuple[str, httpx.Client], raw: bytes) -> None:
    url, http = server
    _check(http, f"{url}/v1/responses", content=raw)


def test_the_server_is_healthy_after_the_fuzzing(server: tuple[str, httpx.Client]) -> None:
    url, http = server
    assert http.get(f"{url}/health").json() == {
        "status": "ok", "model": "gpt-oss", "running": 0, "waiting": 0,
    }  # fmt: skip
    answer = http.post(f"{url}/v1/responses", json={"model": "gpt-oss", "input": "Hi"}).json()
    assert answer["output"][-1]["content"][0]["text"] == "Hello!"
    assert answer["usage"]["output_tokens"] == token_count(GREETING)
