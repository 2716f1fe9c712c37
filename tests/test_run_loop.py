"""What a run reports beyond its messages: progress token by token, and the raw output that no
message holds. Scripted completions through the real encoder and parser."""

from __future__ import annotations

import pytest

from harmony_agent.agent import Agent, ModelProgress, RunDone
from harmony_agent.agent.run_loop import PROGRESS_SECONDS
from harmony_agent.model import ScriptedModel, harmony_encoding
from harmony_agent.tools import function_tool

CALL = '<|channel|>commentary to=functions.add <|constrain|>json<|message|>{"a": 2, "b": 3}<|call|>'
THINK = "<|channel|>analysis<|message|>Add them.<|end|>"
FINAL = "<|channel|>final<|message|>The answer is 5.<|return|>"


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def tokens(text: str) -> list[int]:
    return harmony_encoding().encode(text, allowed_special="all")


def test_progress_is_reported_from_the_start_of_each_model_call() -> None:
    model = ScriptedModel([CALL, FINAL], delay=PROGRESS_SECONDS / 4)
    events = list(Agent(model, tools=[add]).stream("2 + 3?"))
    progress = [(e.step, e.tokens) for e in events if isinstance(e, ModelProgress)]
    first, second = len(tokens(CALL)), len(tokens(FINAL))
    # As each call starts, before any token: the count so far.
    assert progress[0] == (1, 0)
    assert next(p for p in progress if p[0] == 2) == (2, first)
    # Then while tokens come (every fourth or so here), the count growing to the run's total.
    counts = [n for _, n in progress]
    assert counts == sorted(counts) and counts[-1] <= first + second
    assert sum(step == 1 for step, _ in progress) >= 3 and sum(s == 2 for s, _ in progress) >= 2
    done = events[-1]
    assert isinstance(done, RunDone) and done.result.usage.output_tokens == first + second
    kinds = [e.type for e in events]
    assert kinds.index("model.progress") < kinds.index("tool_call.delta")


def test_a_fast_model_is_not_slowed_by_an_event_per_token() -> None:
    turn = "<|channel|>final<|message|>" + "word " * 2000 + "<|return|>"
    events = list(Agent(ScriptedModel([turn]), max_turn_tokens=4000).stream("hi"))
    assert sum(isinstance(e, ModelProgress) for e in events) < 100


def test_a_valid_run_has_no_raw_output() -> None:
    result = Agent(ScriptedModel([THINK + "<|start|>assistant" + FINAL])).run("hi")
    assert result.status == "completed" and result.raw is None
    assert result.to_dict()["raw"] is None


@pytest.mark.parametrize(
    ("turn", "raw", "detail"),
    [
        # Text without a header: no delta, no message; before, it left no trace at all.
        ("Just words.<|return|>", "Just words.<|return|>", "no complete message"),
        # A message, then text where a <|start|> belongs: the parser stops at its first token.
        (THINK + "garbage<|return|>", "gar", "not valid harmony"),
        # A header never finished after a message.
        (THINK + "<|start|>assistant<|channel|>final<|return|>",
         "<|start|>assistant<|channel|>final<|return|>", "on the analysis channel"),
    ],
)  # fmt: skip
def test_invalid_output_is_kept_raw(turn: str, raw: str, detail: str) -> None:
    result = Agent(ScriptedModel([turn])).run("hi")
    assert result.status == "invalid_output"
    assert detail in (result.detail or "")
    assert result.raw == raw
    assert result.to_dict()["raw"] == raw


def test_output_cut_off_by_a_limit_is_kept_raw() -> None:
    answer = "<|start|>assistant<|channel|>final<|message|>The answer is 5."
    budget = len(tokens(THINK + answer)) - 2  # stops two tokens before the answer ends
    result = Agent(ScriptedModel([THINK + answer + "<|return|>"]), max_total_tokens=budget).run(
        "hi"
    )
    assert result.status == "max_total_tokens"
    # The finished analysis message is in `messages`; what followed it is the raw output.
    assert [m.channel for m in result.messages[1:]] == ["analysis"]
    assert result.raw == harmony_encoding().decode(tokens(answer)[:-2])
    assert result.raw.startswith("<|start|>assistant<|channel|>final<|message|>The answer")
