"""OpenCode or Kilo Code's CLI against harmony-agent's server, driven by a scripted model: no
weights needed.

    npm install opencode-ai @kilocode/cli         # their binaries ship in the packages
    python examples/clients/run_client.py opencode node_modules/.bin/opencode
    python examples/clients/run_client.py kilo node_modules/.bin/kilo

Both speak Chat Completions through their "OpenAI Compatible" provider (Kilo's CLI is built on
OpenCode and reads the same config: opencode.json next to this file, as kilo.json for Kilo).
Beside the task each asks the same model for a title; that
request gets a title, and the task's turns are scripted: the first reasons, says what it will do
and calls OpenCode's `bash` tool; OpenCode runs the command in a scratch folder and sends the
output back with the reasoning (`reasoning_content`); the second turn answers. The script then
checks what the model read on its second turn. The config names no other provider and turns off
updates and sharing, so the client talks to nothing but the server.
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
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import uvicorn

from harmony_agent import ScriptedModel
from harmony_agent.agent.server import ServerConfig, create_app
from harmony_agent.encoding import harmony_encoding
from harmony_agent.model import Sampling

COMMAND = "echo hello-from-harmony > greeting.txt && cat greeting.txt"
REASONING = "The user wants a greeting file; I will write it with a shell command."
TURNS = [
    f"<|channel|>analysis<|message|>{REASONING}<|end|>"
    "<|start|>assistant<|channel|>commentary<|message|>Writing greeting.txt.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.bash <|constrain|>json"
    f"<|message|>{json.dumps({'command': COMMAND})}<|call|>",
    "<|channel|>analysis<|message|>The file holds the greeting.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>greeting.txt says: hello-from-harmony"
    "<|return|>",
]
TITLE = "<|channel|>final<|message|>Greeting file<|return|>"
PACKAGES = {"opencode": "opencode-ai", "kilo": "@kilocode/cli"}


class TitlesApart:
    """The scripted task, and a title for every title request (sent beside the task, in
    parallel, so the order of the two is not fixed)."""

    def __init__(self) -> None:
        self.task = ScriptedModel(TURNS)
        self.encoding = harmony_encoding()

    def generate(
        self,
        prompt: Sequence[int],
        *,
        stop_tokens: Collection[int],
        max_tokens: int,
        sampling: Sampling = Sampling(),  # noqa: B008 - frozen dataclass
    ) -> Iterator[int]:
        if "Generate a title for this conversation" in self.encoding.decode(list(prompt)):
            return ScriptedModel([TITLE]).generate(
                prompt, stop_tokens=stop_tokens, max_tokens=max_tokens
            )
        return self.task.generate(prompt, stop_tokens=stop_tokens, max_tokens=max_tokens)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("client", choices=["opencode", "kilo"])
    parser.add_argument("binary", nargs="?", help="its binary (default: found on PATH)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds it may take")
    args = parser.parse_args()
    binary = args.binary or shutil.which(args.client)
    if not binary:
        parser.error(f"no {args.client} binary: npm install {PACKAGES[args.client]}")
    env_prefix = args.client.upper() if args.client == "kilo" else "OPENCODE"

    model = TitlesApart()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(ServerConfig(model, model_name="gpt-oss"))  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)

    with tempfile.TemporaryDirectory() as scratch:
        home, work = Path(scratch, "home"), Path(scratch, "work")
        home.mkdir()
        work.mkdir()
        config = json.loads((Path(__file__).parent / "opencode.json").read_text())
        provider = config["provider"]["harmony-agent"]
        # A literal key: Kilo's CLI 7.7 rejects the whole file for an `{env:...}` value here.
        provider["options"] = {"baseURL": f"http://127.0.0.1:{port}/v1", "apiKey": "unused"}
        provider["models"] = {"gpt-oss": {**provider["models"]["gpt-oss-20b"], "name": "gpt-oss"}}
        config["model"] = config["small_model"] = "harmony-agent/gpt-oss"
        (work / f"{args.client}.json").write_text(json.dumps(config))
        env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "PWD": str(work),  # they take the project folder from PWD
            **{
                f"{env_prefix}_{name}": "1"
                for name in ("DISABLE_AUTOUPDATE", "DISABLE_MODELS_FETCH", "DISABLE_LSP_DOWNLOAD")
            },
        }
        command = [
            binary,
            "run",
            "--auto",  # approve the bash call: it runs in the scratch folder
            "-m",
            "harmony-agent/gpt-oss",
            "Write a greeting into greeting.txt",
        ]
        print("$", " ".join(command), flush=True)
        proc = subprocess.run(
            command, cwd=work, env=env, capture_output=True, text=True, timeout=args.timeout
        )
        print(proc.stderr, file=sys.stderr)
        print(proc.stdout)
        written = (work / "greeting.txt").read_text() if (work / "greeting.txt").exists() else ""
    server.should_exit = True

    prompts = model.task.prompts
    second = model.encoding.decode(prompts[1]) if len(prompts) > 1 else ""
    output = second.rpartition("functions.bash to=assistant")[2]
    checks = {
        f"{args.client} exited 0": proc.returncode == 0,
        f"{args.client} printed the answer": "greeting.txt says: hello-from-harmony" in proc.stdout,
        "the command ran": written.strip() == "hello-from-harmony",
        "turn 2 read its reasoning": f"<|channel|>analysis<|message|>{REASONING}<|end|>" in second,
        "turn 2 read the call": "<|start|>assistant to=functions.bash" in second,
        "turn 2 read the output": "hello-from-harmony" in output,
    }
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
