"""One import namespace: a user's own `agent.py`, `model.py`, `tools.py` and `sandbox.py` (the
most natural names in this field) live beside `harmony_agent` without clashing, and the package
installs no bare top-level names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CALL = (
    "<|channel|>commentary to=functions.add <|constrain|>json<|message|>"
    '{"a": 2, "b": 3}<|call|>'
)
FINAL = "<|channel|>final<|message|>2 + 3 = 5<|return|>"
USER_FILES = {
    "agent.py": "WHOSE = 'the user agent'\n",
    "model.py": "WHOSE = 'the user model'\n",
    "sandbox.py": "WHOSE = 'the user sandbox'\n",
    "tools.py": (
        "from harmony_agent import function_tool\n\nWHOSE = 'the user tools'\n\n\n"
        "@function_tool\ndef add(a: int, b: int) -> int:\n"
        '    """Add two integers."""\n    return a + b\n'
    ),
}
SCRIPT = f"""
import agent, model, sandbox, tools
from harmony_agent import Agent, ScriptedModel

result = Agent(ScriptedModel([{CALL!r}, {FINAL!r}]), tools=[tools.add]).run("2+3?")
print(result.status, result.final)
print(agent.WHOSE, model.WHOSE, sandbox.WHOSE, tools.WHOSE, sep=" | ")
"""


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "HARMONY_AGENT_CACHE": str(tmp_path / "cache")}


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=_clean_env(tmp_path),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_users_agent_model_tools_and_sandbox_files_do_not_clash(tmp_path: Path) -> None:
    for name, text in USER_FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "main.py").write_text(SCRIPT)
    proc = run(tmp_path, "main.py")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "completed 2 + 3 = 5",
        "the user agent | the user model | the user sandbox | the user tools",
    ]


def test_no_bare_top_level_names_are_installed(tmp_path: Path) -> None:
    check = (
        "import importlib.util\n"
        "print([n for n in ('agent', 'model', 'tools', 'sandbox') "
        "if importlib.util.find_spec(n) is not None])"
    )
    proc = run(tmp_path, "-c", check)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_python_m_harmony_agent_is_the_cli(tmp_path: Path) -> None:
    (tmp_path / "tools_here.py").write_text(USER_FILES["tools.py"])
    (tmp_path / "turns.json").write_text(json.dumps([CALL, FINAL]))
    proc = run(tmp_path, "-m", "harmony_agent", "run", "--scripted", "turns.json",
               "--tools", "tools_here:add", "2+3?")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2 + 3 = 5"
