"""How a tool author tests tools: drive an agent with ScriptedModel, no weights needed.

Each scripted turn is what the model would write after `<|start|>assistant`; the agent runs the
real harmony encoder and parser, validates the arguments, calls the tools, and feeds their
output back, exactly as with a real model.
"""

from __future__ import annotations

from openai_harmony import Role
from weather_plugin import TOOLS

from harmony_agent.agent import Agent
from harmony_agent.model import ScriptedModel


def call(tool: str, arguments: str) -> str:
    return (
        f"<|channel|>commentary to=functions.{tool} <|constrain|>json<|message|>{arguments}<|call|>"
    )


def final(text: str) -> str:
    return f"<|channel|>final<|message|>{text}<|return|>"


def tool_outputs(result) -> list[str]:
    return [m.content[0].text for m in result.messages if m.author.role == Role.TOOL]


def test_weather_call_reaches_the_model() -> None:
    model = ScriptedModel([call("get_weather", '{"city": "Oslo", "unit": "fahrenheit"}'),
                           final("It is 39.2°F in Oslo.")])  # fmt: skip
    result = Agent(model, tools=TOOLS).run("How warm is Oslo in °F?")
    assert result.final == "It is 39.2°F in Oslo."
    assert tool_outputs(result) == ['{"city": "Oslo", "temperature": 39.2, "unit": "fahrenheit"}']


def test_the_model_sees_the_tool_schema() -> None:
    model = ScriptedModel([final("ok")])
    Agent(model, tools=TOOLS).run("hi")
    prompt = model.prompts[0]
    from harmony_agent.model import harmony_encoding

    text = harmony_encoding().decode(prompt)
    assert 'unit?: "celsius" | "fahrenheit", // default: celsius' in text


def test_mistakes_go_back_to_the_model() -> None:
    model = ScriptedModel(
        [
            call("get_weather", '{"city": "Atlantis"}'),
            call("get_forecast", '{"city": "Lima", "days": "three"}'),
            call("get_forecast", '{"city": "Lima", "days": 2}'),
            final("19.5 then 20.5."),
        ]
    )
    result = Agent(model, tools=TOOLS).run("Forecast for Lima?")
    unknown, invalid, forecast = tool_outputs(result)
    assert unknown == "no weather for 'Atlantis'; known cities: cairo, lima, oslo, paris"
    assert invalid == (
        "Invalid arguments for functions.get_forecast:\n"
        "- field 'days': expected integer, got string \"three\""
    )
    assert forecast == '{"city":"Lima","days":[19.5,20.5],"unit":"celsius"}'
