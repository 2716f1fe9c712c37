"""The OpenAI Agents SDK runs an agent with a function tool against the server, through both
of its model classes (Responses and Chat Completions)."""

from __future__ import annotations

import asyncio
import os

import openai
import pytest
from _support import KEPT_REASONING, SUNNY, WEATHER_CALL, decoded_prompt, serving_model

os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"  # it would export traces to api.openai.com
agents = pytest.importorskip("agents")
agents.set_tracing_disabled(True)

from harmony_agent import ScriptedModel  # noqa: E402


@agents.function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"18C and sunny in {city}"


def _model(model_class: str, client: openai.AsyncOpenAI) -> object:
    if model_class == "OpenAIResponsesModel":
        return agents.OpenAIResponsesModel(model="gpt-oss", openai_client=client)
    # By default the SDK sends `reasoning_content` back to DeepSeek models only; harmony needs
    # the reasoning of the turn after a tool call, so ask for it (as the README says).
    return agents.OpenAIChatCompletionsModel(
        model="gpt-oss", openai_client=client, should_replay_reasoning_content=lambda _: True
    )


@pytest.mark.parametrize("model_class", ["OpenAIResponsesModel", "OpenAIChatCompletionsModel"])
def test_an_agents_sdk_agent_calls_its_tool_through_the_server(model_class: str) -> None:
    model = ScriptedModel([WEATHER_CALL, SUNNY])
    with serving_model(model) as (url, _):
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        agent = agents.Agent(
            name="weather",
            instructions="Answer questions about the weather.",
            tools=[get_weather],
            model=_model(model_class, client),
        )
        result = asyncio.run(agents.Runner.run(agent, "Weather in Paris?"))
    assert result.final_output == "It is 18C and sunny in Paris."
    assert "Answer questions about the weather." in decoded_prompt(model, 0)
    assert "type get_weather = (_: {" in decoded_prompt(model, 0)
    continued = decoded_prompt(model, 1)
    assert KEPT_REASONING in continued
    assert (
        "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"
        "18C and sunny in Paris<|end|>"
    ) in continued
