"""Hostile programs sent through the whole agent loop: scripted model -> python tool -> sandbox."""

from __future__ import annotations

import os
import secrets

from _support import requires_sandbox
from openai_harmony import Role

from harmony_agent.agent import Agent
from harmony_agent.model import ScriptedModel
from harmony_agent.sandbox import SandboxConfig
from harmony_agent.tools.python_tool import PythonTool

MiB = 1 << 20
FINAL = "<|channel|>final<|message|>done<|return|>"


pytestmark = requires_sandbox


def call(code: str) -> str:
    return f"<|channel|>analysis to=python<|message|>{code}<|call|>"


def test_hostile_programs_through_the_agent(tmp_path: os.PathLike[str]) -> None:
    token = secrets.token_hex(16)
    secret = f"/tmp/harmony-agent-secret-{secrets.token_hex(8)}"
    with open(secret, "w") as f:
        f.write(token)
    programs = [
        f"print(open({secret!r}).read())",
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 22), timeout=1)\n"
        "    print('CONNECTED')\nexcept OSError as e:\n    print(type(e).__name__)",
        "hog = bytearray(1 << 30)",
        "print('still', 'here')",
    ]
    model = ScriptedModel([*map(call, programs), FINAL])
    tool = PythonTool(timeout=30.0, sandbox=SandboxConfig(memory_bytes=256 * MiB))
    try:
        with Agent(model, tools=[tool]) as agent:
            result = agent.run("Try to escape.")
    finally:
        os.unlink(secret)
    assert result.final == "done"
    outputs = [
        "".join(c.text for c in m.content) for m in result.messages if m.author.role == Role.TOOL
    ]
    assert [m.author.name for m in result.messages if m.author.role == Role.TOOL] == ["python"] * 4
    read, connect, hog, after = outputs
    assert token not in read and "FileNotFoundError" in read
    assert connect in ("TimeoutError", "OSError", "ConnectionRefusedError")
    assert "ran out of memory" in hog or "MemoryError" in hog
    assert after == "still here"
