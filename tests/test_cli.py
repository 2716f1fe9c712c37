"""The `harmony-agent` command, driven as a user would: subprocesses and a pseudo-terminal."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
from _support import CALL, FINAL, PROMPT, TOOLS, cli_env, requires_sandbox


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "cli_tools.py").write_text(TOOLS)
    (tmp_path / "turns.json").write_text(json.dumps([CALL, FINAL]))
    return tmp_path


env = cli_env


def test_tools_come_from_the_current_folder_as_python_m_would(workdir: Path) -> None:
    # The installed console script, run in the user's folder, with no PYTHONPATH help.
    script = shutil.which("harmony-agent")
    assert script is not None, "the package's console script is not installed"
    plain = {k: v for k, v in env(workdir).items() if k != "PYTHONPATH"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([script, *args], cwd=workdir, env=plain, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    proc = run("run", "--scripted", "turns.json", "--tools", "cli_tools:add", "2+3?")
    assert proc.returncode == 0, proc.stderr
    assert "5" in proc.stdout
    proc = run("run", "--scripted", "turns.json", "--tools", "my_tolls:add", "2+3?")
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert f"no module 'my_tolls' in {workdir}" in proc.stderr


def cli(workdir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # No input unless a test gives some: a task is read from piped stdin.
    feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run(
        [sys.executable, "-m", "harmony_agent", *args],
        cwd=workdir, env=env(workdir), capture_output=True, text=True, timeout=120, **feed,
    )  # fmt: skip


def test_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "harmony_agent", "--version"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0
    assert re.fullmatch(r"harmony-agent \d+\.\d+\.\d+\S*\n", proc.stdout), proc.stdout


@pytest.mark.parametrize("task_arg", [["-"], []])
def test_the_task_can_come_from_stdin(workdir: Path, task_arg: list[str]) -> None:
    proc = cli(workdir, "run", "--scripted", "turns.json", "--tools", "cli_tools:add",
               *task_arg, stdin="What is 2 + 3?\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "The answer is **5**."


@pytest.mark.parametrize("command", ["inspect", "tools"])
def test_a_reader_that_goes_away_ends_the_output_quietly(workdir: Path, command: str) -> None:
    if command == "inspect":
        made = cli(workdir, "random-checkpoint", "--preset", "tiny", "--layers", "1", "ckpt")
        assert made.returncode == 0, made.stderr
        args = ["inspect", "ckpt"]
    else:
        args = ["tools", "--tools", "cli_tools:add"]
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` having exited: every write fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "harmony_agent", *args],
            cwd=workdir, env=env(workdir), stdout=write_end, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    # Plain prints end as a shell reports SIGPIPE; rich's console ends with 1. Both say nothing.
    assert proc.returncode == (141 if command == "inspect" else 1)
    assert proc.stderr == ""


def test_run_prints_the_answer_on_stdout(workdir: Path) -> None:
    proc = cli(workdir, "run", "--scripted", "turns.json", "--tools", "cli_tools:add", "2+3?")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "The answer is **5**.\n"
    assert "Use the tool." in proc.stderr and "functions.add" in proc.stderr
    assert "2 steps · 1 tool calls" in proc.stderr


def test_run_json_is_one_document(workdir: Path) -> None:
    proc = cli(workdir, "run", "--scripted", "turns.json", "--tools", "cli_tools:add", "--json",
               "2+3?")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["final"] == "The answer is **5**." and doc["status"] == "completed"
    assert [m["role"] for m in doc["messages"]] == ["user", "assistant", "assistant", "tool",
                                                    "assistant"]  # fmt: skip
    assert doc["usage"]["tool_calls"] == 1
    assert proc.stderr == ""


def test_run_without_an_answer_exits_3(workdir: Path) -> None:
    proc = cli(workdir, "run", "--scripted", "turns.json", "--tools", "cli_tools:add",
               "--max-steps", "1", "2+3?")  # fmt: skip
    assert proc.returncode == 3
    assert "max_steps: max_steps (1) reached without a final answer" in proc.stderr


def test_transcript_and_continue(workdir: Path) -> None:
    (workdir / "more.json").write_text(json.dumps(["<|channel|>final<|message|>6<|return|>"]))
    first = cli(workdir, "run", "--scripted", "turns.json", "--tools", "cli_tools:add",
                "--transcript", "t.jsonl", "2+3?")  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = cli(workdir, "run", "--scripted", "more.json", "--continue", "t.jsonl", "--json",
                 "plus one?")  # fmt: skip
    assert second.returncode == 0, second.stderr
    roles = [m["role"] for m in json.loads(second.stdout)["messages"]]
    assert roles == ["user", "assistant", "assistant", "tool", "assistant", "user", "assistant"]
    lines = (workdir / "t.jsonl").read_text().splitlines()
    assert sum(json.loads(line).get("type") == "run" for line in lines) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--model", "no/such/folder", "hi"], "no/such/folder"),
        (["run", "--model", ".", "hi"], "huggingface-cli download openai/gpt-oss-20b"),
        (["run", "--scripted", "missing.json", "hi"], "cannot read scripted turns missing.json"),
        (["run", "--scripted", "turns.json", "--tools", "nope:add", "hi"], "cannot import 'nope'"),
        (
            ["run", "--scripted", "turns.json", "--continue", "none.jsonl", "hi"],
            "transcript not found: none.jsonl",
        ),
    ],
)
def test_bad_input_is_one_line(workdir: Path, args: list[str], message: str) -> None:
    proc = cli(workdir, *args)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_the_demo_model_answers_without_any_model_given(workdir: Path) -> None:
    environment = {k: v for k, v in env(workdir).items() if k != "HARMONY_AGENT_MODEL"}
    proc = subprocess.run([sys.executable, "-m", "harmony_agent", "run", "What is 37 * 41 + 5?"],
                          cwd=workdir, env=environment, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "37 * 41 + 5 = 1522\n"
    assert proc.stderr.startswith("No model given: using the built-in demo model")
    assert "print(37 * 41 + 5)" in proc.stderr


def test_bad_command_line_exits_2(workdir: Path) -> None:
    proc = cli(workdir, "run", "--max-steps", "0", "hi")
    assert proc.returncode == 2 and "must be at least 1, got 0" in proc.stderr


def test_tools_lists_schemas(workdir: Path) -> None:
    proc = cli(workdir, "tools", "--tools", "cli_tools:add")
    assert proc.returncode == 0
    assert "functions.add  Add two integers." in proc.stdout
    assert '"a": {"type": "integer"}' in proc.stdout


def test_chat_in_a_terminal(workdir: Path) -> None:
    slow = "<|channel|>analysis<|message|>" + "thinking " * 2000 + "<|end|>"
    (workdir / "chat.json").write_text(json.dumps({"turns": [CALL, FINAL, slow], "delay": 0.01}))
    child = pexpect.spawn(
        sys.executable, ["-m", "harmony_agent", "chat", "--scripted", "chat.json", "--tools",
                         "cli_tools:add"],
        cwd=str(workdir), env=env(workdir), encoding="utf-8", timeout=60, dimensions=(40, 100),
    )  # fmt: skip
    try:
        child.expect("tools: functions.add")
        child.expect(PROMPT)
        child.sendline("/effort high")
        child.expect("reasoning effort: high")
        child.sendline("What is 2+3?")
        child.expect("The answer is")
        child.expect(r"2 steps · 1 tool calls")
        child.expect(PROMPT)
        child.sendline("/save saved.jsonl")
        child.expect("saved 5 messages to saved.jsonl")
        child.sendline("think hard")
        child.expect("thinking")
        child.sendintr()  # Ctrl-C stops the answer, not the chat
        child.expect("stopped")
        child.expect(PROMPT)
        child.sendline("/tools")
        child.expect("functions.add")
        child.sendline("one more?")  # the script has no turn left: an error line, not the end
        child.expect("ran out of turns")
        child.expect(PROMPT)
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    saved = [json.loads(line) for line in (workdir / "saved.jsonl").read_text().splitlines()]
    assert saved[0]["message"]["role"] == "system"
    assert '"reasoning_effort": "High"' in json.dumps(saved[0])


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny gpt-oss with the full harmony vocabulary and random weights: its output is
    garbage, which is the point."""
    import dataclasses

    from harmony_agent.encoding import VOCAB_SIZE
    from harmony_agent.model.checkpoint import write_random_checkpoint
    from harmony_agent.model.config import PRESETS

    config = dataclasses.replace(PRESETS["tiny"], vocab_size=VOCAB_SIZE)
    return write_random_checkpoint(tmp_path_factory.mktemp("random"), config, seed=1)


def test_run_on_a_random_checkpoint_ends_cleanly(workdir: Path, random_checkpoint: Path) -> None:
    proc = cli(workdir, "run", "--model", str(random_checkpoint), "--max-tokens", "24",
               "--temperature", "0", "hello")  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "⚠ max_total_tokens" in proc.stderr or "⚠ invalid_output" in proc.stderr


def test_chat_on_a_random_checkpoint(workdir: Path, random_checkpoint: Path) -> None:
    child = pexpect.spawn(
        sys.executable, ["-m", "harmony_agent", "chat", "--model", str(random_checkpoint),
                         "--max-tokens", "16"],
        cwd=str(workdir), env=env(workdir), encoding="utf-8", timeout=120, dimensions=(40, 100),
    )  # fmt: skip
    try:
        child.expect(PROMPT)
        child.sendline("hello")
        child.expect("⚠ (max_total_tokens|invalid_output)")
        child.expect(PROMPT)
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_a_checkpoint_without_the_harmony_vocabulary_is_refused(workdir: Path) -> None:
    from harmony_agent.model.checkpoint import write_random_checkpoint
    from harmony_agent.model.config import PRESETS

    folder = write_random_checkpoint(workdir / "small", PRESETS["tiny"])
    proc = cli(workdir, "run", "--model", str(folder), "hi")
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("fewer than harmony's 201088: it cannot run as an agent")


TASKS = '{"id": "a", "task": "one"}\n"two"\n{"id": "c", "task": "three"}\n'
ANSWERS = [f"<|channel|>final<|message|>answer {i}<|return|>" for i in range(3)]
CUT_OFF = "<|channel|>final<|message|>The answ"  # ends mid-message: invalid_output
NO_MODEL = ("--model", "no-such-checkpoint")  # loading it fails: proof that nothing loaded it


def batch(workdir: Path, turns: list[str] | None, *args: str) -> subprocess.CompletedProcess[str]:
    """`run --batch tasks.jsonl` on scripted turns, or on NO_MODEL when `turns` is None."""
    if turns is None:
        return cli(workdir, "run", *NO_MODEL, "--batch", "tasks.jsonl", *args)
    (workdir / "script.json").write_text(json.dumps(turns))
    return cli(workdir, "run", "--scripted", "script.json", "--batch", "tasks.jsonl", *args)


def result_lines(workdir: Path, *fields: str) -> list[tuple[object, ...]]:
    lines = (workdir / "tasks.results.jsonl").read_text().splitlines()
    return [tuple(r[f] for f in fields) for r in map(json.loads, lines)]


def test_batch_is_resumable(workdir: Path) -> None:
    (workdir / "tasks.jsonl").write_text(TASKS)
    # The model dies at the third task (it has only two turns): an error, recorded, that stops
    # the batch.
    first = batch(workdir, ANSWERS[:2])
    assert first.returncode == 1
    assert first.stderr.splitlines()[-3:] == [
        "[3/3] c: error",
        "done: 2/3 completed, 1 error; results in tasks.results.jsonl",
        "harmony-agent: error: ScriptedModel ran out of turns: generate() called 3 times but only "
        "2 turns were scripted",
    ]
    assert result_lines(workdir, "id", "final", "status") == [
        ("a", "answer 0", "completed"), ("2", "answer 1", "completed"), ("c", None, "error")
    ]  # fmt: skip
    # Rerun: only the task that did not complete runs.
    second = batch(workdir, ANSWERS[2:])
    assert second.returncode == 0, second.stderr
    assert "running 1 of 3 tasks (1 retried)\n[1/1] c: completed" in second.stderr
    assert result_lines(workdir, "id", "task", "status") == [
        ("a", "one", "completed"), ("2", "two", "completed"), ("c", "three", "error"),
        ("c", "three", "completed"),
    ]  # fmt: skip
    (detail,) = result_lines(workdir, "detail")[2]
    assert str(detail).startswith("ScriptExhausted: ScriptedModel ran out of turns")


def test_batch_retries_what_did_not_complete(workdir: Path) -> None:
    (workdir / "tasks.jsonl").write_text(TASKS)
    first = batch(workdir, [ANSWERS[0], CUT_OFF, ANSWERS[2]])
    assert first.returncode == 3, first.stderr
    assert first.stderr.splitlines() == [
        "running 3 of 3 tasks",
        "[1/3] a: completed (0.0 s)",
        "[2/3] 2: invalid_output (0.0 s)",
        "[3/3] c: completed (0.0 s)",
        "done: 2/3 completed, 1 invalid_output; results in tasks.results.jsonl",
    ]
    # --no-retry leaves the failed task as it is: nothing to run, no model loaded, still exit 3.
    kept = batch(workdir, None, "--no-retry")
    assert kept.returncode == 3, kept.stderr
    assert kept.stderr == (
        "nothing to do: 2/3 completed, 1 invalid_output; results in tasks.results.jsonl\n"
    )
    # Without it the failed task is retried, so the model must load (and here cannot).
    broken = batch(workdir, None)
    assert broken.returncode == 1
    assert broken.stderr.splitlines()[-1].startswith("harmony-agent: error: no-such-checkpoint:")
    retried = batch(workdir, [ANSWERS[1]], "--json")
    assert retried.returncode == 0, retried.stderr
    assert "running 1 of 3 tasks (1 retried)\n[1/1] 2: completed" in retried.stderr
    assert json.loads(retried.stdout) == {
        "results": "tasks.results.jsonl",
        "ran": 1,
        "counts": {"completed": 3},
        "tasks": [{"id": i, "status": "completed"} for i in ("a", "2", "c")],
        "interrupted": False,
    }
    # The results file is a history: the failed attempt stays, the last line per task wins.
    assert result_lines(workdir, "id", "final", "status") == [
        ("a", "answer 0", "completed"), ("2", None, "invalid_output"),
        ("c", "answer 2", "completed"), ("2", "answer 1", "completed"),
    ]  # fmt: skip


@requires_sandbox
def test_ctrl_c_stops_a_batch_with_its_summary_and_a_rerun_goes_on(workdir: Path) -> None:
    (workdir / "tasks.jsonl").write_text(TASKS)
    sleep = "<|channel|>analysis to=python<|message|>import time; time.sleep(120)<|call|>"
    (workdir / "script.json").write_text(json.dumps([ANSWERS[0], sleep]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "harmony_agent", "run", "--scripted", "script.json", "--python",
         "--batch", "tasks.jsonl"],
        cwd=workdir, env=cli_env(workdir), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines = [proc.stderr.readline() for _ in range(2)]
    assert lines[1].startswith("[1/3] a: completed"), lines
    time.sleep(2)  # the second task is in its python call now
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert rest.strip().splitlines()[-1] == (
        "stopped: 1/3 completed, 2 not_run; results in tasks.results.jsonl; "
        "the same command goes on from here"
    )
    again = batch(workdir, ANSWERS[1:])
    assert again.returncode == 0, again.stderr
    assert again.stderr.startswith("running 2 of 3 tasks\n")


def test_a_finished_batch_loads_no_model(workdir: Path) -> None:
    (workdir / "tasks.jsonl").write_text(TASKS)
    assert batch(workdir, ANSWERS).returncode == 0
    again = batch(workdir, None, "--json")
    assert again.returncode == 0, again.stderr
    assert again.stderr == "nothing to do: 3/3 completed; results in tasks.results.jsonl\n"
    assert json.loads(again.stdout)["ran"] == 0
    assert len(result_lines(workdir, "id")) == 3


MEET = '''
import threading
from harmony_agent.tools import function_tool

_here = threading.Barrier(3, timeout=60)

@function_tool
def add(a: int, b: int) -> int:
    """Add two integers, once three callers are here at once."""
    _here.wait()
    return a + b
'''


def test_batch_concurrency_runs_tasks_at_once_each_with_its_own_tools(workdir: Path) -> None:
    (workdir / "meet.py").write_text(MEET)  # returns only when three tasks call it together
    (workdir / "tasks.jsonl").write_text(TASKS)
    (workdir / "script.json").write_text(json.dumps([CALL] * 3 + [FINAL] * 3))
    proc = cli(workdir, "run", "--scripted", "script.json", "--tools", "meet:add",
               "--batch", "tasks.jsonl", "--concurrency", "3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(result_lines(workdir, "id", "final", "status")) == [
        (i, "The answer is **5**.", "completed") for i in ("2", "a", "c")
    ]
    assert proc.stderr.splitlines()[-1] == "done: 3/3 completed; results in tasks.results.jsonl"


def test_batch_options_need_batch(workdir: Path) -> None:
    message = "--output, --no-retry and --concurrency go with --batch TASKS"
    for option in (["--no-retry"], ["--output", "out.jsonl"], ["--concurrency", "2"]):
        proc = cli(workdir, "run", "--scripted", "turns.json", *option, "hi")
        assert proc.returncode == 1
        assert proc.stderr == f"harmony-agent: error: {message}\n"


def test_bad_batch_file(workdir: Path) -> None:
    (workdir / "bad.jsonl").write_text('{"id": 1, "task": "x"}\n{"id": 1, "task": "y"}\n')
    proc = cli(workdir, "run", "--scripted", "turns.json", "--batch", "bad.jsonl")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "harmony-agent: error: bad.jsonl: duplicate task ids: 1"


def test_a_script_out_of_turns_is_one_line(workdir: Path) -> None:
    (workdir / "short.json").write_text(json.dumps([CALL]))
    proc = cli(workdir, "run", "--scripted", "short.json", "--tools", "cli_tools:add", "2+3?")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("harmony-agent: error: ScriptedModel ran out of turns")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("device", "message"),
    [("tpu", "unknown device 'tpu': use cpu, cuda or cuda:N"), ("cuda", "install a CUDA build")],
)
def test_a_device_that_cannot_work_is_one_line(workdir: Path, device: str, message: str) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = cli(workdir, "run", "--device", device, "hi")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("harmony-agent: error: ") and message in last
    assert "Traceback" not in proc.stderr


def test_every_option_of_every_command_has_help() -> None:
    import argparse

    from harmony_agent.agent.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "harmony-agent")
    assert missing == []
