"""Codex CLI against harmony-agent's server, driven by a scripted model: no weights needed.

    npm install @openai/codex                     # its binary ships in the package
    python examples/codex/run_codex.py --codex node_modules/.bin/codex

The scripted model's first turn reasons, says what it will do, and calls Codex's `exec_command`
tool; Codex runs the command in a scratch folder (`-s danger-full-access`: its own sandbox needs
a helper binary many machines lack) and sends the output back; the second turn answers. The
script then checks what the model read on its second turn: its own reasoning, the call, and the
command's output. Codex talks to the server exactly as it would with real gpt-oss weights
(`harmony-agent serve --model PATH`, with the provider of config.toml next to this file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn

from harmony_agent import ScriptedModel
from harmony_agent.agent.server import ServerConfig, create_app
from harmony_agent.encoding import harmony_encoding

COMMAND = "echo hello-from-harmony > greeting.txt && cat greeting.txt"
REASONING = "The user wants a greeting file; I will write it with a shell command."
TURNS = [
    f"<|channel|>analysis<|message|>{REASONING}<|end|>"
    "<|start|>assistant<|channel|>commentary<|message|>Writing greeting.txt.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.exec_command <|constrain|>json"
    f"<|message|>{json.dumps({'cmd': COMMAND})}<|call|>",
    "<|channel|>analysis<|message|>The file holds the greeting.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>greeting.txt says: hello-from-harmony"
    "<|return|>",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codex", default=shutil.which("codex"), help="the codex binary")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds Codex may take")
    args = parser.parse_args()
    if not args.codex:
        parser.error("no codex binary: npm install @openai/codex, then pass --codex PATH")

    model = ScriptedModel(TURNS)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(ServerConfig(model, model_name="gpt-oss"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)

    with tempfile.TemporaryDirectory() as scratch:
        home, work = Path(scratch, "codex-home"), Path(scratch, "work")
        home.mkdir()
        work.mkdir()
        config = (Path(__file__).parent / "config.toml").read_text()
        config = config.replace('model = "gpt-oss-20b"', 'model = "gpt-oss"')
        config = config.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        (home / "config.toml").write_text(config)
        command = [
            args.codex,
            "exec",
            "-s",
            "danger-full-access",
            "--skip-git-repo-check",
            "-C",
            str(work),
            "Write a greeting into greeting.txt",
        ]
        print("$", " ".join(command), flush=True)
        proc = subprocess.run(
            command,
            env={**os.environ, "CODEX_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
        print(proc.stderr, file=sys.stderr)
        print(proc.stdout)
        written = (work / "greeting.txt").read_text() if (work / "greeting.txt").exists() else ""
    server.should_exit = True

    second = harmony_encoding().decode(model.prompts[1]) if len(model.prompts) > 1 else ""
    checks = {
        "codex exited 0": proc.returncode == 0,
        "codex printed the answer": "greeting.txt says: hello-from-harmony" in proc.stdout,
        "the command ran": written.strip() == "hello-from-harmony",
        "turn 2 read its reasoning": f"<|channel|>analysis<|message|>{REASONING}<|end|>" in second,
        "turn 2 read the call": "<|start|>assistant to=functions.exec_command" in second,
        "turn 2 read the output": "functions.exec_command to=assistant" in second
        and "hello-from-harmony" in second.rpartition("functions.exec_command to=assistant")[2],
    }
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
