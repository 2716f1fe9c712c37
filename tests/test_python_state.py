"""The python kernel's state follows the conversation: chat's /reset and /load, batch tasks, and
what a stopped turn leaves behind. The real CLI, the real sandbox, a scripted model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pexpect
from _support import PROMPT, cli_env, requires_sandbox, spawn_cli

pytestmark = requires_sandbox

FINAL = "<|channel|>final<|message|>Done.<|return|>"


def python(code: str) -> str:
    return f"<|channel|>analysis to=python<|message|>{code}<|call|>"


def test_chat_restarts_the_kernel_with_the_conversation(tmp_path: Path) -> None:
    slow = "<|channel|>analysis<|message|>" + "thinking " * 2000 + "<|end|>"
    turns = [
        python("x = 1\nprint('x is', x)"), FINAL,
        python("open('/mnt/data/note.txt', 'w').write('written')"), slow,  # stopped by Ctrl-C
        python("print(open('/mnt/data/note.txt').read())\nprint(x)"), FINAL,  # after /reset
        python("x = 2"), FINAL,
        python("print(x)"), FINAL,  # after /load
    ]  # fmt: skip
    (tmp_path / "chat.json").write_text(json.dumps({"turns": turns, "delay": 0.005}))
    child = spawn_cli(tmp_path, "chat", "--scripted", "chat.json", "--python")
    try:
        child.expect(PROMPT)
        child.sendline("set x")
        child.expect("x is 1")
        child.expect("Done.")
        child.expect(PROMPT)
        child.sendline("/save saved.jsonl")
        child.expect("saved 4 messages")
        child.sendline("write a file, then think")
        child.expect("thinking")
        child.sendintr()
        child.expect(r"\(this turn is not kept; the effects of its python calls remain\)")
        child.expect(PROMPT)
        child.sendline("/reset")
        child.expect("new conversation")
        child.sendline("show the file and x")
        child.expect("written")  # the stopped turn's file stayed, as the message said
        child.expect("NameError: name 'x' is not defined")  # the new conversation's kernel
        child.expect("Done.")
        child.expect(PROMPT)
        child.sendline("set x again")
        child.expect("Done.")
        child.expect(PROMPT)
        child.sendline("/load saved.jsonl")
        child.expect("loaded 4 messages")
        child.sendline("show x")
        child.expect("NameError: name 'x' is not defined")
        child.expect("Done.")
        child.expect(PROMPT)
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_batch_tasks_do_not_share_a_kernel(tmp_path: Path) -> None:
    (tmp_path / "tasks.jsonl").write_text('"set x"\n"show x"\n')
    (tmp_path / "turns.json").write_text(json.dumps([python("x = 1"), FINAL, python("x"), FINAL]))
    proc = subprocess.run(
        [sys.executable, "-m", "harmony_agent", "run", "--scripted", "turns.json", "--python",
         "--batch", "tasks.jsonl"],
        cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in (tmp_path / "tasks.results.jsonl").open()]
    tool_output = results[1]["messages"][2]["content"][0]["text"]
    assert tool_output.endswith("NameError: name 'x' is not defined")
