"""The Responses API through the official openai SDK, against a live server on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from _support import (
    GREETING,
    KEPT_REASONING,
    SUNNY,
    WEATHER_CALL,
    decoded_prompt,
    requires_sandbox,
    serving_model,
    token_count,
)

from harmony_agent import ScriptedModel

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_a_text_answer_comes_with_reasoning_and_real_usage() -> None:
    model = ScriptedModel([GREETING])
    with serving_model(model) as (_, client):
        response = client.responses.create(model="gpt-oss", input="Hi", instructions="Be brief.")
    assert response.status == "completed"
    assert response.output_text == "Hello!"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "The user greets me."  # type: ignore[union-attr,index]
    assert response.output[1].phase == "final_answer"  # type: ignore[union-attr]
    assert response.usage is not None
    assert response.usage.input_tokens == len(model.prompts[0])
    assert response.usage.output_tokens == token_count(GREETING)
    assert response.usage.output_tokens_details.reasoning_tokens == token_count(
        "The user greets me."
    )
    assert "Be brief." in decoded_prompt(model, 0)
    assert decoded_prompt(model, 0).endswith("<|start|>user<|message|>Hi<|end|><|start|>assistant")


def test_streaming_follows_the_responses_event_sequence() -> None:
    model = ScriptedModel([GREETING, GREETING])
    with serving_model(model) as (_, client):
        events = list(client.responses.create(model="gpt-oss", input="Hi", stream=True))
        with client.responses.stream(model="gpt-oss", input="Hi") as stream:
            final = stream.get_final_response()
    kinds = [e.type for e in events]
    deduplicated = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert deduplicated == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello!"
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.usage.output_tokens == token_count(GREETING)
    assert final.output_text == "Hello!"  # the SDK's own accumulator agrees with the events


def test_a_function_call_goes_to_the_client_and_the_reasoning_comes_back() -> None:
    model = ScriptedModel([WEATHER_CALL, SUNNY])
    with serving_model(model) as (_, client):
        first = client.responses.create(
            model="gpt-oss", input="Weather in Paris?", tools=[WEATHER], store=False
        )
        assert [item.type for item in first.output] == ["reasoning", "function_call"]
        call = first.output[1]
        assert call.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(call.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
        # A stateless client sends the conversation back, with what the tool answered.
        history = [{"role": "user", "content": "Weather in Paris?"}]
        history += [item.model_dump(exclude_none=True) for item in first.output]
        history.append(
            {"type": "function_call_output", "call_id": call.call_id, "output": "18C, sunny"}  # type: ignore[union-attr]
        )
        second = client.responses.create(
            model="gpt-oss", input=history, tools=[WEATHER], store=False
        )
    assert second.output_text == "It is 18C and sunny in Paris."
    continued = decoded_prompt(model, 1)
    assert KEPT_REASONING in continued  # the model reads its reasoning after the call
    assert (
        "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json"
        '<|message|>{"city": "Paris"}<|call|>'
        "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>18C, sunny"
        "<|end|>"
    ) in continued


def test_encrypted_reasoning_alone_brings_the_reasoning_back_and_a_forged_one_does_not() -> None:
    model = ScriptedModel([WEATHER_CALL, SUNNY, SUNNY])
    with serving_model(model) as (_, client):
        first = client.responses.create(
            model="gpt-oss",
            input="Weather in Paris?",
            tools=[WEATHER],
            store=False,
            include=["reasoning.encrypted_content"],
        )
        reasoning, call = (item.model_dump(exclude_none=True) for item in first.output)
        assert reasoning["encrypted_content"]
        del reasoning["content"]  # as a client that keeps only the opaque part
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
        user = {"role": "user", "content": "Weather in Paris?"}
        client.responses.create(
            model="gpt-oss", input=[user, reasoning, call, output], tools=[WEATHER], store=False
        )
        token = reasoning["encrypted_content"]
        forged = {**reasoning, "encrypted_content": token[:-2] + ("A" if token[-2] != "A" else "B")}
        forged_token = forged["encrypted_content"]
        assert forged_token != token
        client.responses.create(
            model="gpt-oss", input=[user, forged, call, output], tools=[WEATHER], store=False
        )
    assert KEPT_REASONING in decoded_prompt(model, 1)
    assert "I need the weather" not in decoded_prompt(model, 2)


def test_previous_response_id_continues_with_the_function_calls() -> None:
    later = "<|channel|>final<|message|>Rain tomorrow.<|return|>"
    model = ScriptedModel([WEATHER_CALL, SUNNY, later])
    with serving_model(model) as (_, client):
        question = [
            {"role": "developer", "content": "Answer in one line."},
            {"role": "user", "content": "Weather in Paris?"},
        ]
        first = client.responses.create(model="gpt-oss", input=question, tools=[WEATHER])  # type: ignore[arg-type]
        call_id = first.output[-1].call_id  # type: ignore[union-attr]
        second = client.responses.create(
            model="gpt-oss",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call_id, "output": "sunny"}],
            tools=[WEATHER],
        )
        third = client.responses.create(
            model="gpt-oss", previous_response_id=second.id, input="And tomorrow?"
        )
        kept = client.responses.retrieve(second.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve("resp_unknown")
        with pytest.raises(openai.NotFoundError) as unknown:
            client.responses.create(model="gpt-oss", previous_response_id="resp_gone", input="x")
    assert second.output_text == "It is 18C and sunny in Paris."
    assert third.output_text == "Rain tomorrow."
    assert kept.output_text == second.output_text
    assert unknown.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert KEPT_REASONING in decoded_prompt(model, 1)
    call = '<|message|>{"city": "Paris"}<|call|><|start|>functions.get_weather to=assistant'
    assert call in decoded_prompt(model, 1)
    # After the answer, harmony drops the turn's reasoning but keeps its calls and answer.
    assert call in decoded_prompt(model, 2)
    assert "It is 18C and sunny in Paris.<|end|>" in decoded_prompt(model, 2)
    assert "I need the weather" not in decoded_prompt(model, 2)
    assert "Answer in one line." in decoded_prompt(model, 2)  # input messages stay
    assert decoded_prompt(model, 2).endswith(
        "<|start|>user<|message|>And tomorrow?<|end|><|start|>assistant"
    )


def test_codex_namespace_tools_are_harmony_namespaces() -> None:
    """As Codex sends them: developer messages, a `namespace` tool, a web_search tool the
    server has no browser for, and the call's `namespace` echoed back."""
    turn = (
        "<|channel|>commentary to=multi_agent_v1.close_agent <|constrain|>json"
        '<|message|>{"target": "a1"}<|call|>'
    )
    model = ScriptedModel([turn, "<|channel|>final<|message|>Closed.<|return|>"])
    namespace = {
        "type": "namespace",
        "name": "multi_agent_v1",
        "description": "Tools for sub-agents.",
        "tools": [
            {
                "type": "function",
                "name": "close_agent",
                "description": "Close an agent.",
                "strict": False,
                "parameters": {
                    "type": "object",
                    "properties": {"target": {"type": "string"}},
                    "required": ["target"],
                },
            },
        ],
    }
    body: dict[str, Any] = {
        "model": "gpt-oss",
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "You are a coding agent."}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Close a1."}],
            },
        ],
        "tools": [namespace, {"type": "web_search", "external_web_access": True}],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "stream": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "session-1",
        "client_metadata": {"turn_id": "t1"},
    }
    with serving_model(model) as (url, _):
        first = httpx.post(f"{url}/v1/responses", json=body).json()
        (call,) = first["output"]
        assert (call["type"], call["namespace"], call["name"]) == (
            "function_call",
            "multi_agent_v1",
            "close_agent",
        )
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": "closed"}
        body["input"] += [call, output]
        second = httpx.post(f"{url}/v1/responses", json=body).json()
    assert second["output"][-1]["content"][0]["text"] == "Closed."
    assert "namespace multi_agent_v1 {" in decoded_prompt(model, 0)
    assert "You are a coding agent." in decoded_prompt(model, 0)
    assert "browser" not in decoded_prompt(model, 0)
    assert "<|start|>multi_agent_v1.close_agent to=assistant" in decoded_prompt(model, 1)


@requires_sandbox
def test_builtin_python_runs_on_the_server_and_keeps_its_state() -> None:
    from harmony_agent.tools import PythonTool

    def python(code: str, answer: str) -> list[str]:
        call = (
            "<|channel|>analysis<|message|>Compute it.<|end|><|start|>assistant<|channel|>"
            f"analysis to=python code<|message|>{code}<|call|>"
        )
        return [call, f"<|channel|>final<|message|>{answer}<|return|>"]

    model = ScriptedModel([*python("x = 6 * 7\nprint(x)", "42."), *python("print(x + 1)", "43.")])
    tools = [{"type": "code_interpreter", "container": {"type": "auto"}}]
    with serving_model(model, builtins={"python": PythonTool}) as (_, client):
        first = client.responses.create(model="gpt-oss", input="6 * 7?", tools=tools)  # type: ignore[arg-type]
        second = client.responses.create(
            model="gpt-oss",
            input="Plus one?",
            previous_response_id=first.id,
            tools=tools,  # type: ignore[arg-type]
        )
    assert [item.type for item in first.output] == ["reasoning", "code_interpreter_call", "message"]
    run = first.output[1]
    assert run.code == "x = 6 * 7\nprint(x)"  # type: ignore[union-attr]
    assert run.outputs[0].logs.strip() == "42"  # type: ignore[union-attr,index]
    assert "<|start|>python to=assistant<|channel|>analysis<|message|>42" in decoded_prompt(
        model, 1
    )
    assert second.output[1].outputs[0].logs.strip() == "43"  # type: ignore[union-attr,index]
    assert second.output_text == "43."


class _CountingScript(ScriptedModel):
    """Records how many tokens it produced: whether a generation stopped early."""

    produced = 0

    def _stream(self, turn: list[int], stop_tokens: set[int], max_tokens: int) -> Iterator[int]:
        for token in super()._stream(turn, stop_tokens, max_tokens):
            self.produced += 1
            yield token


def _long_answer() -> str:
    return "<|channel|>final<|message|>" + "word " * 300 + "<|return|>"


def _wait_idle(url: str) -> float:
    started = time.monotonic()
    while httpx.get(f"{url}/health").json()["running"] and time.monotonic() - started < 5:
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_client_that_disconnects_stops_its_generation() -> None:
    model = _CountingScript([_long_answer(), _long_answer()], delay=0.02)  # 6 s each
    body = {"model": "gpt-oss", "input": "Talk.", "stream": True}
    with serving_model(model) as (url, _), httpx.Client() as http:
        with http.stream("POST", f"{url}/v1/responses", json=body) as stream:
            for line in stream.iter_lines():
                if "response.output_text.delta" in line:
                    break
        assert _wait_idle(url) < 2
        streamed = model.produced
        # Waiting for the whole response, then giving up, also stops it.
        with pytest.raises(httpx.ReadTimeout):
            http.post(f"{url}/v1/responses", json={**body, "stream": False}, timeout=0.5)
        assert _wait_idle(url) < 2
    total = token_count(_long_answer())
    assert streamed < total / 3
    assert model.produced - streamed < total / 3


def test_the_servers_own_tools_run_here_and_a_stateless_client_keeps_their_results() -> None:
    from harmony_agent.tools import function_tool

    @function_tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    add_first = (
        "<|channel|>analysis<|message|>Add first.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.add <|constrain|>json<|message|>{"a": 2, "b": 3}<|call|>'
    )
    model = ScriptedModel([add_first, WEATHER_CALL, SUNNY])
    with serving_model(model, tools=[add]) as (_, client):
        first = client.responses.create(
            model="gpt-oss",
            input="Add, then the weather.",
            tools=[WEATHER],
            store=False,
            include=["reasoning.encrypted_content"],
        )
        # The server's call shows as a sealed reasoning item only; the client's call ends it.
        kinds = [item.type for item in first.output]
        assert kinds == ["reasoning", "reasoning", "reasoning", "function_call"]
        assert first.output[1].content == []  # type: ignore[union-attr]
        history: list[Any] = [{"role": "user", "content": "Add, then the weather."}]
        history += [item.model_dump(exclude_none=True) for item in first.output]
        history.append(
            {"type": "function_call_output", "call_id": first.output[-1].call_id, "output": "sun"}  # type: ignore[union-attr]
        )
        client.responses.create(model="gpt-oss", input=history, tools=[WEATHER], store=False)
        with pytest.raises(openai.BadRequestError) as clash:  # a client's add: whose is it?
            client.responses.create(model="gpt-oss", input="x", tools=[{**WEATHER, "name": "add"}])
    assert clash.value.body["param"] == "tools"  # type: ignore[index]
    assert "<|start|>functions.add to=assistant<|channel|>commentary<|message|>5<|end|>" in (
        decoded_prompt(model, 1)
    )
    again = decoded_prompt(model, 2)  # rebuilt from what the client sent back
    assert decoded_prompt(model, 1) in again
    assert "type add = (_: {" in again and "type get_weather = (_: {" in again


def test_tool_choice_required_makes_the_model_call_a_tool() -> None:
    answer = "<|channel|>analysis<|message|>Guess.<|end|><|start|>assistant<|channel|>final"
    answer += "<|message|>Probably sunny.<|return|>"
    named = "functions.get_weather<|channel|>commentary <|constrain|>json<|message|>"
    model = ScriptedModel([answer, named + '{"city": "Oslo"}<|call|>'])
    with serving_model(model) as (_, client):
        events = list(
            client.responses.create(
                model="gpt-oss",
                input="Weather in Oslo?",
                tools=[WEATHER],
                tool_choice="required",
                stream=True,
            )
        )
    # Nothing of the answer the model began was streamed: reasoning, then the call.
    assert not [e for e in events if e.type == "response.output_text.delta"]
    done = events[-1]
    assert done.type == "response.completed"
    assert [item.type for item in done.response.output] == ["reasoning", "function_call"]
    assert json.loads(done.response.output[1].arguments) == {"city": "Oslo"}  # type: ignore[union-attr]
    assert decoded_prompt(model, 1).endswith("Guess.<|end|><|start|>assistant to=")


def test_a_text_format_schema_reaches_the_developer_message() -> None:
    model = ScriptedModel(['<|channel|>final<|message|>{"n": 4}<|return|>'])
    text_format = {"type": "json_schema", "name": "count", "schema": {"type": "object"}}
    with serving_model(model) as (_, client):
        response = client.responses.create(
            model="gpt-oss", input="2 + 2?", text={"format": text_format}  # type: ignore[typeddict-item]
        )
    assert json.loads(response.output_text) == {"n": 4}
    assert response.text.format.type == "json_schema"  # type: ignore[union-attr]
    assert '# Response Formats\n\n## count\n\n{"type":"object"}<|end|>' in decoded_prompt(model, 0)
