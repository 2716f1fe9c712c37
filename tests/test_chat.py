"""`harmony-agent chat` as a user at a terminal meets it: multi-line messages, pastes, history,
the status line while the model works, raw output, NO_COLOR. A pseudo-terminal, whose output a
terminal emulator renders to check what stays on the screen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from _support import CALL, FINAL, PROMPT, TOOLS, TerminalScreen, cli_env, colour_codes, spawn_cli

INVALID = "Just some words, no header.<|return|>"
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"  # what a terminal sends around a paste
ALT_ENTER = "\x1b\r"


def answers(n: int) -> list[str]:
    return [f"<|channel|>final<|message|>answer {i}<|return|>" for i in range(1, n + 1)]


def user_messages(transcript: Path) -> list[str]:
    records = [json.loads(line) for line in transcript.read_text().splitlines()]
    return [
        r["message"]["content"][0]["text"]
        for r in records
        if r["type"] == "message" and r["message"]["role"] == "user"
    ]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "cli_tools.py").write_text(TOOLS)
    return tmp_path


def chat(workdir: Path, turns: list[str] | dict[str, object], *args: str,
         **env: str) -> pexpect.spawn:  # fmt: skip
    (workdir / "turns.json").write_text(json.dumps(turns))
    child = spawn_cli(workdir, "chat", "--scripted", "turns.json", *args, **env)
    child.expect(PROMPT)
    return child


def leave(child: pexpect.spawn) -> None:
    child.expect(PROMPT)
    child.send("/quit\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_paste_is_one_message_and_alt_enter_starts_a_line(workdir: Path) -> None:
    child = chat(workdir, answers(2), "--transcript", "t.jsonl")
    try:
        child.send(f"{PASTE_START}line one\nline two{PASTE_END}")
        child.send("\r")
        child.expect("answer 1")
        child.expect(PROMPT)
        child.send(f"first{ALT_ENTER}")
        child.send("second\r")
        child.expect("answer 2")
        leave(child)
    finally:
        child.close()
    # One user turn each: the model was asked twice, with both lines each time.
    assert user_messages(workdir / "t.jsonl") == ["line one\nline two", "first\nsecond"]


def test_history_and_editing_across_sessions(workdir: Path) -> None:
    first = chat(workdir, answers(1))
    try:
        first.send(f"first{ALT_ENTER}second\r")
        first.expect("answer 1")
        leave(first)
    finally:
        first.close()
    second = chat(workdir, answers(2), "--transcript", "t.jsonl")
    try:
        second.send("\x1b[A\x1b[A")  # Up, Up: past /quit to the message before, both lines
        second.send("\r")
        second.expect("answer 1")
        second.expect(PROMPT)
        second.send("hllo\x01\x1b[Ce\r")  # Ctrl-A, Right, a missing letter
        second.expect("answer 2")
        leave(second)
    finally:
        second.close()
    assert user_messages(workdir / "t.jsonl") == ["first\nsecond", "hello"]


@pytest.mark.parametrize("no_color", ["", "1"])
def test_the_status_line_and_raw_output(workdir: Path, no_color: str) -> None:
    # Slow enough for the status line to show, each turn a few seconds at most.
    script = {"turns": [CALL, FINAL, INVALID, INVALID], "delay": 0.05}
    child = chat(workdir, script, "--tools", "cli_tools:add", NO_COLOR=no_color)
    screen = TerminalScreen()
    child.logfile_read = screen
    try:
        child.send("What is 2+3?\r")
        child.expect(r"working · \d+ s · \d+ tokens")  # while the tool call is written
        child.expect("The answer is")
        child.expect(r"2 steps · 1 tool calls")
        child.expect(PROMPT)
        child.send("/nope\r")  # a warning, in yellow where colour is allowed
        child.expect("unknown command")
        child.expect(PROMPT)
        child.send("and now?\r")
        child.expect(r"working · \d+ s · \d+ tokens")  # no text streams from headerless output
        child.expect("⚠ invalid_output")
        child.expect(PROMPT)
        child.send("once more\r")
        child.expect(r"working · \d+ s · \d+ tokens")
        child.sendintr()
        child.expect("stopped")
        leave(child)
    finally:
        child.close()
    shown = screen.text
    assert "working" not in shown  # the status line left nothing behind, Ctrl-C included
    assert "→ functions.add" in shown and "The answer is 5." in shown
    assert f"raw model output: {INVALID}\n⚠ invalid_output" in shown
    assert f"\x1b[2m{INVALID}" in screen.written  # dimmed
    assert bool(colour_codes(screen.written)) == (not no_color)


def test_piped_input_is_a_message_a_line(workdir: Path) -> None:
    (workdir / "turns.json").write_text(json.dumps(answers(2)))
    proc = subprocess.run(
        [sys.executable, "-m", "harmony_agent", "chat", "--scripted", "turns.json", "--transcript",
         "t.jsonl"],
        cwd=workdir, env=cli_env(workdir), input="one\ntwo\n", capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "answer 1" in proc.stdout and "answer 2" in proc.stdout
    assert user_messages(workdir / "t.jsonl") == ["one", "two"]
