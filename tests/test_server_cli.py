"""`harmony-agent serve` as users start it: a real process, a real port, a real client."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from _support import GREETING, cli_env

from harmony_agent.agent.cli import main


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(folder: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harmony_agent", "serve", *args],
        cwd=folder,
        env=cli_env(folder, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serve_answers_with_its_key_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    (tmp_path / "turns.json").write_text(json.dumps([GREETING]))
    port = _free_port()
    server = _serve(tmp_path, "--scripted", "turns.json", "--port", str(port),
                    "--log-level", "warning", HARMONY_AGENT_API_KEY="k3y")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.ConnectError:
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k3y", max_retries=0)
        assert client.responses.create(model="gpt-oss", input="Hi").output_text == "Hello!"
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr
    assert f"serving gpt-oss at http://127.0.0.1:{port}/v1" in stderr


def test_serve_refuses_an_open_address_without_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "turns.json").write_text("[]")
    args = ["serve", "--scripted", str(tmp_path / "turns.json"), "--host", "0.0.0.0"]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert error.startswith("harmony-agent: error: refusing to listen on 0.0.0.0 without an ")
    assert error.count("\n") == 1  # one line, no traceback


def test_serve_needs_a_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HARMONY_AGENT_MODEL", raising=False)
    assert main(["serve"]) == 1
    assert "serve needs a model: --model PATH" in capsys.readouterr().err
