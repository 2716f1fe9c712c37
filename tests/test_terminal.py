"""The terminal view of a run: the status line while the model works, the raw output of a run
that ended without one, and NO_COLOR. Real runs (scripted turns through the real parser) on a
rendered terminal screen, and the `harmony-agent` command in subprocesses and a terminal."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
from _support import CALL, FINAL, TOOLS, TerminalScreen, cli_env, colour_codes, spawn_cli
from rich.console import Console

from harmony_agent.agent import Agent, ModelProgress, ReasoningDelta
from harmony_agent.agent.terminal import STATUS_DELAY, EventView
from harmony_agent.model import ScriptedModel
from harmony_agent.tools import function_tool

INVALID = "Just some words, no header. " * 4 + "<|return|>"
STATUS = "working · "


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def terminal_view(**options: bool) -> tuple[EventView, TerminalScreen]:
    screen = TerminalScreen()
    return EventView(Console(file=screen, width=100), **options), screen


def test_the_status_line_counts_time_before_the_first_token() -> None:
    view, screen = terminal_view()
    view(ModelProgress(step=1, tokens=0))  # the model starts to read its prompt
    deadline = time.monotonic() + 10
    while "working · 1 s · 0 tokens" not in screen.written:  # no event arrives meanwhile
        assert time.monotonic() < deadline, screen.written
        time.sleep(0.05)
    view(ModelProgress(step=1, tokens=1))
    view(ReasoningDelta("Let me see."))
    assert screen.text == "Let me see."  # the status line is gone; the text took its place
    view.close()


@pytest.mark.parametrize("show_reasoning", [True, False])
def test_the_status_line_gives_way_to_text_and_panels(show_reasoning: bool) -> None:
    view, screen = terminal_view(show_reasoning=show_reasoning)
    model = ScriptedModel([CALL, FINAL], delay=STATUS_DELAY / 5)
    with Agent(model, tools=[add]) as agent:
        for event in agent.stream("What is 2 + 3?"):
            view(event)
    # It showed while the call was written (tool call arguments do not stream to the screen),
    # and left nothing behind.
    assert STATUS in screen.written and STATUS not in screen.text
    lines = screen.text.splitlines()
    assert ("Use the tool." in lines) == show_reasoning
    assert " · 2 steps · 1 tool calls · " in lines[-1]
    assert any("→ functions.add" in line for line in lines)
    assert "The answer is 5." in lines


def test_no_status_line_off_a_terminal() -> None:
    output = io.StringIO()
    view = EventView(Console(file=output, width=100))
    with Agent(ScriptedModel([FINAL], delay=STATUS_DELAY)) as agent:
        for event in agent.stream("hi"):
            view(event)
    assert STATUS not in output.getvalue()


def run_shown(turn: str, **options: bool) -> str:
    output = io.StringIO()
    view = EventView(Console(file=output, width=60), **options)
    with Agent(ScriptedModel([turn])) as agent:
        for event in agent.stream("hi"):
            view(event)
    return output.getvalue()


def test_invalid_output_is_shown_raw() -> None:
    lines = run_shown(INVALID).splitlines()
    # Whole on one line, however narrow the console: a terminal wraps it, a log keeps it.
    assert lines[:2] == [
        f"raw model output: {INVALID}",
        "⚠ invalid_output: the model produced no complete message",
    ]
    assert " tokens · " in lines[2]


def test_long_raw_output_is_shortened_unless_raw_is_shown() -> None:
    turn = "".join(f"line {i}\n" for i in range(20)) + "<|return|>"
    assert "line 11\n… 9 more lines\n⚠ invalid_output" in run_shown(turn)
    assert "line 19\n<|return|>\n⚠ invalid_output" in run_shown(turn, raw=True)


def test_raw_output_is_dimmed() -> None:
    view, screen = terminal_view()
    with Agent(ScriptedModel([INVALID])) as agent:
        for event in agent.stream("hi"):
            view(event)
    assert f"\x1b[2m{INVALID}" in screen.written


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "cli_tools.py").write_text(TOOLS)
    (tmp_path / "invalid.json").write_text(json.dumps([INVALID]))
    (tmp_path / "turns.json").write_text(json.dumps([CALL, FINAL]))
    return tmp_path


def run_cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harmony_agent", "run", *args], cwd=workdir,
                          env=cli_env(workdir), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_run_prints_invalid_output_on_stderr(workdir: Path) -> None:
    proc = run_cli(workdir, "--scripted", "invalid.json", "hi")
    assert proc.returncode == 3 and proc.stdout == ""
    assert f"raw model output: {INVALID}\n" in proc.stderr  # one line, as COLUMNS=100 is not


def test_run_json_has_the_raw_output(workdir: Path) -> None:
    invalid = run_cli(workdir, "--scripted", "invalid.json", "--json", "hi")
    assert invalid.returncode == 3 and invalid.stderr == ""
    assert json.loads(invalid.stdout)["raw"] == INVALID
    valid = run_cli(workdir, "--scripted", "turns.json", "--tools", "cli_tools:add", "--json", "hi")
    assert valid.returncode == 0, valid.stderr
    doc = json.loads(valid.stdout)
    assert doc["status"] == "completed" and doc["raw"] is None


def terminal_output(workdir: Path, *args: str, no_color: str) -> str:
    child = spawn_cli(workdir, *args, NO_COLOR=no_color)
    child.expect(pexpect.EOF)
    child.close()
    return child.before


def test_no_color_means_no_colour_in_a_terminal(workdir: Path) -> None:
    made = subprocess.run([sys.executable, "-m", "harmony_agent", "random-checkpoint", "--preset",
                           "tiny", "--layers", "1", "ckpt"], cwd=workdir, env=cli_env(workdir),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert made.returncode == 0, made.stderr
    # A tool panel with highlighted JSON, the status line, raw output, the summary line.
    (workdir / "mixed.json").write_text(json.dumps({"turns": [CALL, INVALID], "delay": 0.02}))
    run = ["run", "--scripted", "mixed.json", "--tools", "cli_tools:add", "2+3?"]
    outputs = {
        "run": terminal_output(workdir, *run, no_color="1"),
        "inspect": terminal_output(workdir, "inspect", "ckpt", no_color="1"),
        "error": terminal_output(workdir, "run", "--scripted", "missing.json", "hi", no_color="1"),
    }
    assert "→ functions.add" in outputs["run"] and "raw model output" in outputs["run"]
    assert "ckpt: original layout" in outputs["inspect"]
    assert "harmony-agent: error: cannot read scripted turns" in outputs["error"]
    assert {name: colour_codes(output) for name, output in outputs.items()} == {
        name: [] for name in outputs
    }
    # The check finds colour where there is some.
    assert colour_codes(terminal_output(workdir, *run, no_color=""))
