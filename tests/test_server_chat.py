"""Chat Completions through the official openai SDK, against a live server on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from _support import (
    GREETING,
    KEPT_REASONING,
    SUNNY,
    WEATHER_CALL,
    decoded_prompt,
    serving_model,
    token_count,
)

from harmony_agent import ScriptedModel

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_an_answer_with_its_reasoning_and_real_usage() -> None:
    model = ScriptedModel([GREETING])
    with serving_model(model) as (_, client):
        completion = client.chat.completions.create(
            model="gpt-oss",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
        )
    (choice,) = completion.choices
    assert choice.message.content == "Hello!"
    assert choice.message.reasoning_content == "The user greets me."  # type: ignore[attr-defined]
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(model.prompts[0])
    assert completion.usage.completion_tokens == token_count(GREETING)
    assert "Be brief." in decoded_prompt(model, 0)


def test_streamed_chunks_carry_reasoning_then_content_then_usage() -> None:
    model = ScriptedModel([GREETING])
    with serving_model(model) as (_, client):
        chunks = list(
            client.chat.completions.create(
                model="gpt-oss",
                messages=[{"role": "user", "content": "Hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert reasoning == "The user greets me."
    assert "".join(d.content or "" for d in deltas) == "Hello!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == token_count(
        GREETING
    )


def test_a_tool_call_streams_as_tool_calls_and_its_reasoning_survives_the_round_trip() -> None:
    model = ScriptedModel([WEATHER_CALL, SUNNY, GREETING])
    question = {"role": "user", "content": "Weather in Paris?"}
    with serving_model(model) as (_, client):
        chunks = list(
            client.chat.completions.create(
                model="gpt-oss", messages=[question], tools=[WEATHER], stream=True
            )
        )
        calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
        arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
        assert json.loads(arguments) == {"city": "Paris"}
        assert all(not c.choices[0].delta.content for c in chunks)  # nothing leaks into content
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        reasoning = "".join(
            getattr(c.choices[0].delta, "reasoning_content", "") or "" for c in chunks
        )
        assistant = {
            "role": "assistant",
            "content": None,
            "reasoning_content": reasoning,
            "tool_calls": [
                {
                    "id": calls[0].id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        }
        result = {"role": "tool", "tool_call_id": calls[0].id, "content": "18C, sunny"}
        answer = client.chat.completions.create(
            model="gpt-oss", messages=[question, assistant, result], tools=[WEATHER]
        )
        # The next turn: the finished turn's reasoning is dropped, its call and answer kept.
        said = {"role": "assistant", "content": answer.choices[0].message.content}
        client.chat.completions.create(
            model="gpt-oss",
            messages=[question, assistant, result, said, {"role": "user", "content": "Thanks"}],
            tools=[WEATHER],
        )
    assert answer.choices[0].message.content == "It is 18C and sunny in Paris."
    assert KEPT_REASONING in decoded_prompt(model, 1)
    assert (
        "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>18C, sunny"
        in decoded_prompt(model, 1)
    )
    assert "I need the weather" not in decoded_prompt(model, 2)
    assert "<|channel|>final<|message|>It is 18C and sunny in Paris.<|end|>" in decoded_prompt(
        model, 2
    )


def test_reasoning_is_accepted_under_the_name_reasoning_too() -> None:
    model = ScriptedModel([SUNNY])
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "reasoning": "I need the weather.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    with serving_model(model) as (_, client):
        client.chat.completions.create(model="gpt-oss", messages=messages, tools=[WEATHER])  # type: ignore[arg-type]
    assert KEPT_REASONING in decoded_prompt(model, 0)


def test_a_tool_call_without_its_result_is_a_400_naming_the_field() -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
    ]
    with (
        serving_model(ScriptedModel([])) as (_, client),
        pytest.raises(openai.BadRequestError) as error,
    ):
        client.chat.completions.create(model="gpt-oss", messages=messages)  # type: ignore[arg-type]
    assert error.value.body["param"] == "messages[2].tool_call_id"  # type: ignore[index]


def test_tool_choice_makes_the_model_call_the_named_function() -> None:
    answer = "<|channel|>final<|message|>I cannot know.<|return|>"
    model = ScriptedModel([answer, '{"city": "Paris"}<|call|>'])
    with serving_model(model) as (_, client):
        completion = client.chat.completions.create(
            model="gpt-oss",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert decoded_prompt(model, 1).endswith(
        "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json"
        "<|message|>"
    )


@pytest.mark.parametrize(
    ("tool_choice", "param"),
    [
        ({"type": "function", "function": {"name": "get_time"}}, "tool_choice.function.name"),
        ({"type": "file_search"}, "tool_choice.type"),
        ({"type": [], "name": "get_weather"}, "tool_choice.type"),  # (was a 500, found by fuzzing)
        ("always", "tool_choice"),
    ],
)
def test_a_tool_choice_naming_no_given_tool_is_a_400(tool_choice: object, param: str) -> None:
    with (
        serving_model(ScriptedModel([])) as (_, client),
        pytest.raises(openai.BadRequestError) as error,
    ):
        client.chat.completions.create(
            model="gpt-oss",
            messages=[{"role": "user", "content": "Weather?"}],
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice=tool_choice,  # type: ignore[arg-type]
        )
    assert error.value.body["param"] == param  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_text_ends_the_answer_before_it(stream: bool) -> None:
    script = "<|channel|>final<|message|>Paris is sunny. Oslo is wet. Rome is hot.<|return|>"
    model = ScriptedModel([script], delay=0.05)  # paced, so that the rest is never generated
    request: dict[str, Any] = {
        "model": "gpt-oss",
        "messages": [{"role": "user", "content": "Weather?"}],
        "stop": ["Rome", " Oslo is"],  # the second comes first, over several tokens
    }
    with serving_model(model) as (_, client):
        if stream:
            chunks = list(client.chat.completions.create(**request, stream=True))
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            completion = client.chat.completions.create(**request)
            (choice,) = completion.choices
            content, finish = choice.message.content, choice.finish_reason
            # The generation ended at the stop text, not at the model's end.
            assert completion.usage is not None
            assert completion.usage.completion_tokens < token_count(script)
    assert content == "Paris is sunny."
    assert finish == "stop"


def test_more_than_four_stop_texts_is_a_400() -> None:
    with (
        serving_model(ScriptedModel([])) as (_, client),
        pytest.raises(openai.BadRequestError) as error,
    ):
        client.chat.completions.create(
            model="gpt-oss", messages=[{"role": "user", "content": "Hi"}], stop=list("abcde")
        )
    assert error.value.body["param"] == "stop"  # type: ignore[index]


def test_cached_tokens_are_what_the_engines_prefix_cache_held() -> None:
    from harmony_agent.model.demo import load_demo_model

    model = load_demo_model(progress=False)
    request: dict[str, Any] = {
        "model": "gpt-oss",
        "messages": [{"role": "user", "content": "What is 12 + 30?"}],
        "max_tokens": 4,
        "temperature": 0,
    }
    with serving_model(model) as (_, client):
        first = client.chat.completions.create(**request).usage
        request["messages"].append({"role": "user", "content": "And 5 + 6?"})
        second = client.chat.completions.create(**request).usage
    assert first is not None and second is not None
    assert first.prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]
    # The second prompt starts with the first one: all of it (but its last token) was cached.
    assert second.prompt_tokens_details.cached_tokens == first.prompt_tokens - 1  # type: ignore[union-attr]


def test_a_response_format_ends_the_developer_message_as_harmony_prescribes() -> None:
    model = ScriptedModel(['<|channel|>final<|message|>{"city": "Paris"}<|return|>'])
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    with serving_model(model) as (_, client):
        completion = client.chat.completions.create(
            model="gpt-oss",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Which city?"},
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "place", "description": "Where.", "schema": schema},
            },
        )
    assert json.loads(completion.choices[0].message.content or "") == {"city": "Paris"}
    assert (
        "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n# Response Formats\n\n"
        '## place\n\n// Where.\n{"type":"object","properties":{"city":{"type":"string"}}}<|end|>'
    ) in decoded_prompt(model, 0)


def test_a_response_format_without_a_name_is_a_400() -> None:
    with (
        serving_model(ScriptedModel([])) as (_, client),
        pytest.raises(openai.BadRequestError) as error,
    ):
        client.chat.completions.create(
            model="gpt-oss",
            messages=[{"role": "user", "content": "Hi"}],
            response_format={"type": "json_schema", "json_schema": {"schema": {}}},  # type: ignore[typeddict-item]
        )
    assert error.value.body["param"] == "response_format.json_schema.name"  # type: ignore[index]
