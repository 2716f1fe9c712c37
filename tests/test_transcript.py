"""Transcripts: written as the run goes, survive a crash, and continue a conversation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from openai_harmony import Message, Role

from harmony_agent.agent import Agent, TranscriptError, load_transcript
from harmony_agent.agent.transcript import TranscriptWriter
from harmony_agent.model import ScriptedModel, harmony_encoding
from harmony_agent.tools import function_tool

CALL = '<|channel|>commentary to=functions.add<|message|>{"a": 2, "b": 3}<|call|>'
FINAL = "<|channel|>final<|message|>5<|return|>"


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_transcript_records_the_whole_conversation(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    result = Agent(ScriptedModel([CALL, FINAL]), tools=[add]).run("2+3?", transcript=path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["type"] for r in records] == ["message"] * 6 + ["run"]
    roles = [r["message"]["role"] for r in records[:-1]]
    assert roles == ["system", "developer", "user", "assistant", "tool", "assistant"]
    assert records[-1]["status"] == "completed"
    loaded = load_transcript(path)
    assert loaded[2:] == result.messages
    # The system message survives the round trip well enough to render identically.
    encoding = harmony_encoding()
    assert encoding.render(loaded[0]) == encoding.render(Agent(ScriptedModel([])).preamble()[0])


def test_continue_from_a_transcript_appends(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    model = ScriptedModel([FINAL, "<|channel|>final<|message|>still 5<|return|>"])
    agent = Agent(model, tools=[add])
    agent.run("2+3?", transcript=path)
    result = agent.run("again?", history=load_transcript(path), transcript=path)
    assert result.final == "still 5"
    messages = load_transcript(path)
    # One system and one developer message: the continuation appended only the new turn.
    assert [m.author.role for m in messages] == [
        Role.SYSTEM,
        Role.DEVELOPER,
        Role.USER,
        Role.ASSISTANT,
        Role.USER,
        Role.ASSISTANT,
    ]
    assert "5<|end|><|start|>user<|message|>again?" in harmony_encoding().decode(model.prompts[1])


def test_crash_loses_at_most_the_message_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    # A real crash: the process dies inside a tool call, mid-run.
    script = textwrap.dedent(
        f"""
        import os
        from harmony_agent.agent import Agent
        from harmony_agent.model import ScriptedModel
        from harmony_agent.tools import function_tool

        @function_tool
        def add(a: int, b: int) -> int:
            os._exit(3)

        Agent(ScriptedModel([{CALL!r}]), tools=[add]).run("2+3?", transcript={str(path)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    assert proc.returncode == 3
    messages = load_transcript(path)
    assert [m.author.role for m in messages] == [
        Role.SYSTEM,
        Role.DEVELOPER,
        Role.USER,
        Role.ASSISTANT,
    ]
    assert messages[-1].recipient == "functions.add"
    # A torn write at the end (the process died while writing) is skipped ...
    with path.open("a") as f:
        f.write('{"type": "message", "message": {"role": "assis')
    assert load_transcript(path) == messages
    # ... and continuing appends on a fresh line, so the file stays readable.
    result = Agent(ScriptedModel([FINAL]), tools=[add]).run(
        "retry", history=messages, transcript=path
    )
    assert result.final == "5"
    assert [m.author.role for m in load_transcript(path)][-2:] == [Role.USER, Role.ASSISTANT]


def test_unreadable_transcripts(tmp_path: Path) -> None:
    with pytest.raises(TranscriptError, match="transcript not found"):
        load_transcript(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('not json\n{"type": "run"}\n')
    with pytest.raises(TranscriptError, match=r"bad.jsonl:1: not a transcript record"):
        load_transcript(bad)


def test_line_separators_inside_a_message_survive_the_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    text = "a page said: one\u2028two\u2029three\x85four"
    writer = TranscriptWriter(path)
    writer.message(Message.from_role_and_content(Role.USER, text))
    writer.close()
    assert [m.content[0].text for m in load_transcript(path)] == [text]  # type: ignore[union-attr]
