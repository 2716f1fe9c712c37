"""`Agent.tool_choice`: an answer begun where a call is due is cut at its header and the turn
resumes from a call's header. Scripted completions through the real encoder and parser."""

from __future__ import annotations

import pytest

from harmony_agent.agent import Agent, FinalDelta
from harmony_agent.model import ScriptedModel, harmony_encoding
from harmony_agent.tools import function_tool

THINK = "<|channel|>analysis<|message|>Add them.<|end|>"
GUESS = "<|start|>assistant<|channel|>final<|message|>It is 6.<|return|>"
ARGUMENTS = '{"a": 2, "b": 3}<|call|>'
FINAL = "<|channel|>final<|message|>The answer is 5.<|return|>"


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@function_tool
def sub(a: int, b: int) -> int:
    """Subtract b from a."""
    return a - b


def decoded(model: ScriptedModel, i: int) -> str:
    return harmony_encoding().decode(model.prompts[i])


def test_a_named_tool_is_called_where_the_model_began_to_answer() -> None:
    model = ScriptedModel([THINK + GUESS, ARGUMENTS, FINAL])
    agent = Agent(model, tools=[add, sub], tool_choice="add")
    events = list(agent.stream("2 + 3?"))
    result = events[-1].result  # type: ignore[attr-defined]
    assert result.status == "completed" and result.final == "The answer is 5."
    # The guessed answer never reached the user: its header was read, none of its text.
    assert "".join(e.text for e in events if isinstance(e, FinalDelta)) == "The answer is 5."
    # The reasoning stays; the resumed call's prompt ends in the named call's header.
    assert decoded(model, 1).endswith(
        "<|start|>assistant<|channel|>analysis<|message|>Add them.<|end|>"
        "<|start|>assistant to=functions.add<|channel|>commentary <|constrain|>json<|message|>"
    )
    roles = [(m.author.role.value, m.recipient, m.channel) for m in result.messages]
    assert roles == [
        ("user", None, None),
        ("assistant", None, "analysis"),
        ("assistant", "functions.add", "commentary"),
        ("tool", "assistant", "commentary"),
        ("assistant", None, "final"),
    ]
    assert result.messages[3].content[0].text == "5"
    # After the call the model decides again: its answer was not cut.
    assert len(model.prompts) == 3


def test_required_lets_the_model_name_the_tool() -> None:
    named = "functions.sub<|channel|>commentary <|constrain|>json<|message|>" + ARGUMENTS
    model = ScriptedModel(["<|channel|>final<|message|>6<|return|>", named, FINAL])
    result = Agent(model, tools=[add, sub], tool_choice="required").run("2 - 3?")
    # The first message of the turn: the prompt already ends in `<|start|>assistant`.
    assert decoded(model, 1).endswith("<|start|>user<|message|>2 - 3?<|end|><|start|>assistant to=")
    assert result.messages[1].recipient == "functions.sub"
    assert result.messages[2].content[0].text == "-1"
    assert result.status == "completed"


def test_a_model_that_calls_by_itself_is_left_alone() -> None:
    call = '<|channel|>commentary to=functions.add <|constrain|>json<|message|>' + ARGUMENTS
    model = ScriptedModel([THINK + "<|start|>assistant" + call, FINAL])
    result = Agent(model, tools=[add], tool_choice="required").run("2 + 3?")
    assert result.final == "The answer is 5." and len(model.prompts) == 2


def test_auto_keeps_the_models_answer() -> None:
    model = ScriptedModel([THINK + GUESS])
    assert Agent(model, tools=[add]).run("2 + 3?").final == "It is 6."


def test_a_blank_tool_choice_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="tool_choice"):
        Agent(ScriptedModel([]), tools=[add], tool_choice=" ")
