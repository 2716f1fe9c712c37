"""Whatever tokens a model emits, a run ends cleanly with a status (property-based)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harmony_agent.agent import Agent, RunDone
from harmony_agent.model import ScriptedModel, harmony_encoding
from harmony_agent.tools import function_tool

VALID_TURNS = [
    "<|channel|>analysis<|message|>Let me add.<|end|><|start|>assistant<|channel|>commentary "
    'to=functions.add <|constrain|>json<|message|>{"a": 1, "b": 2}<|call|>',
    ' to=functions.add<|channel|>commentary<|message|>{"a": 1}<|call|>',
    "<|channel|>final<|message|>It is 3 — trois.<|return|>",
]
SPECIAL = [*range(199998, 200019), 201087]  # harmony's specials and reserved ids
WORDS = [
    t
    for w in (
        "analysis",
        "final",
        "commentary",
        " to=functions.add",
        " to=python",
        "assistant",
        "json",
        '{"a": 1}',
        "}",
        " ",
        "é",
        "日本",
    )
    for t in harmony_encoding().encode(w, allowed_special="all")
]
any_token = st.one_of(st.sampled_from(SPECIAL), st.sampled_from(WORDS), st.integers(0, 201087))


@st.composite
def damaged_turn(draw: st.DrawFn) -> list[int]:
    """A real completion, truncated or with tokens inserted, dropped or replaced."""
    tokens = harmony_encoding().encode(draw(st.sampled_from(VALID_TURNS)), allowed_special="all")
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(tokens)))
        match draw(st.sampled_from(["insert", "drop", "replace"])):
            case "insert":
                tokens.insert(i, draw(any_token))
            case "drop" if tokens:
                tokens.pop(min(i, len(tokens) - 1))
            case "replace" if tokens:
                tokens[min(i, len(tokens) - 1)] = draw(any_token)
    return tokens[: draw(st.integers(0, len(tokens)))] if draw(st.booleans()) else tokens


turn = st.one_of(st.lists(any_token, max_size=40), damaged_turn())


@function_tool
def add(a: int, b: int) -> int:
    """Add."""
    return a + b


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(turn, min_size=1, max_size=4))
def test_any_token_stream_ends_with_a_status(turns: list[list[int]]) -> None:
    model = ScriptedModel(turns)
    agent = Agent(model, tools=[add], max_steps=len(turns), max_turn_tokens=32)
    events = list(agent.stream("What is 1 + 2?"))
    done = events[-1]
    assert isinstance(done, RunDone)
    result = done.result
    assert result.status in {"completed", "max_steps", "max_turn_tokens", "invalid_output"}
    assert (result.final is not None) == (result.status == "completed")
    assert result.usage.steps == len(model.prompts) <= len(turns)
