"""What the OpenAI-compatible server costs: a request through it against the same run in-process,
and the throughput of concurrent clients.

    python benchmarks/server.py                       # the demo model, on the CPU
    python benchmarks/server.py --device cuda --repeats 10

First without a model (ScriptedModel generates at no cost): a streamed request in-process,
through the server read as raw HTTP, and through the openai SDK (which parses every event).
Then with a real model, the built-in demo one, on the question it was trained on ("Convert 12 km
to miles.": reasoning, then a call of `convert_units`), so that every request generates the same
tokens at temperature 0. In-process, `Agent.stream` runs it until the call; through the server,
the openai SDK streams `POST /v1/responses` with `convert_units` declared as the client's
function, which ends the response at the call: the same tokens on the same model object,
measured in turn. Figures: time to the first streamed token, tokens per second after it, the
whole request, and the difference (the server's cost per request). Clients run in the server's
process (their parsing counts against the server). Last, the aggregate tokens/s of 1, 4 and 16
clients streaming at once, as a ratio to one client: the engine decodes concurrent requests in
one batch.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: idle OpenMP threads spin
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHORT = (
    "<|channel|>analysis<|message|>A greeting.<|end|><|start|>assistant<|channel|>final"
    "<|message|>Hello! How can I help?<|return|>"
)
LONG = (
    "<|channel|>final<|message|>"
    + "The quick brown fox jumps over the lazy dog. " * 200
    + "<|return|>"
)


@dataclass
class Timing:
    first: float
    """Seconds from the request to the first streamed token of text."""
    total: float
    tokens: int

    @property
    def rate(self) -> float:
        """Tokens per second after the first one."""
        return (self.tokens - 1) / (self.total - self.first) if self.total > self.first else 0.0


@contextmanager
def serving(config: Any) -> Iterator[Any]:
    """The server in a thread of this process; yields an openai SDK client for it."""
    import openai
    import uvicorn

    from harmony_agent.agent.server import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
    finally:
        server.should_exit = True
        thread.join()


def without_a_model(requests: int) -> None:
    import httpx

    from harmony_agent.agent import Agent
    from harmony_agent.agent.server import ServerConfig
    from harmony_agent.model import ScriptedModel, harmony_encoding

    encoding = harmony_encoding()
    print("the server's own cost (ScriptedModel: no model time), ms a request")
    print(f"  {'':26s} {'in-process':>10s} {'raw HTTP':>9s} {'openai SDK':>11s}")
    for name, turn, count in (("short answer", SHORT, requests), ("long answer", LONG, 3)):
        tokens = encoding.encode(turn, allowed_special="all")
        agent = Agent(ScriptedModel([tokens] * (count + 1)), max_turn_tokens=100_000)
        config = ServerConfig(
            ScriptedModel([tokens] * 2 * (count + 1)), model_name="m", max_turn_tokens=100_000
        )
        body = {"model": "m", "input": "Hi", "stream": True}
        local, raw, sdk = [], [], []
        with serving(config) as client, httpx.Client(base_url=str(client.base_url)) as http:
            for _request in range(count + 1):  # the first of each warms up
                started = time.perf_counter()
                for _ in agent.stream("Hi"):
                    pass
                local.append(time.perf_counter() - started)
                started = time.perf_counter()
                with http.stream("POST", "responses", json=body) as response:
                    for _ in response.iter_lines():
                        pass
                raw.append(time.perf_counter() - started)
                started = time.perf_counter()
                for _ in client.responses.create(model="m", input="Hi", stream=True):
                    pass
                sdk.append(time.perf_counter() - started)
        agent.close()
        shown = [_median(times[1:]) * 1e3 for times in (local, raw, sdk)]
        label = f"{name} ({len(tokens)} tokens)"
        print(f"  {label:26s} {shown[0]:10.1f} {shown[1]:9.1f} {shown[2]:11.1f}")


def question(i: int) -> str:
    return f"Convert {12 + i % 80} km to miles."


def demo_agent(device: str | None, backend: str | None) -> Any:
    """The demo model with the tools and date it was trained with (python is declared and never
    called: the questions are conversions)."""
    from harmony_agent.agent import Agent
    from harmony_agent.model import Sampling
    from harmony_agent.model.demo import DEMO_CURRENT_DATE, load_demo_model
    from harmony_agent.model.demo.task import convert_units
    from harmony_agent.tools import PythonTool, function_tool

    model = load_demo_model(progress=False, device=device, backend=backend)
    python = PythonTool(dangerously_allow_unsandboxed=True)
    return Agent(
        model,
        tools=[python, function_tool(convert_units)],
        current_date=DEMO_CURRENT_DATE,
        sampling=Sampling(temperature=0),
        max_turn_tokens=256,
    )


def in_process(agent: Any, i: int) -> Timing:
    from harmony_agent.agent.server.runs import CountingModel

    model = agent.model
    agent.model = counted = CountingModel(model)
    started = time.perf_counter()
    first = None
    try:
        for event in agent.stream(question(i)):
            if event.type in (
                "reasoning.delta",
                "commentary.delta",
                "final.delta",
                "tool_call.delta",
            ):
                first = first if first is not None else time.perf_counter() - started
            elif event.type == "tool_call":  # as the server does, stop at the client's function
                break
    finally:
        agent.model = model
    total = time.perf_counter() - started
    return Timing(first or total, total, counted.output_tokens)


def through_server(client: Any, i: int, tools: list[dict[str, Any]]) -> Timing:
    started = time.perf_counter()
    first = None
    usage = None
    stream = client.responses.create(
        model="demo", input=question(i), tools=tools, stream=True, store=False
    )
    for event in stream:
        if event.type.endswith(".delta"):
            first = first if first is not None else time.perf_counter() - started
        elif event.type == "response.completed":
            usage = event.response.usage
    total = time.perf_counter() - started
    assert usage is not None, "the response did not complete"
    return Timing(first or total, total, usage.output_tokens)


def concurrently(
    client: Any, clients: int, repeats: int, tools: list[dict[str, Any]]
) -> tuple[float, float]:
    """`clients` threads streaming `repeats` requests each: aggregate tokens/s, median time to
    the first token."""
    timings: list[Timing] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for j in range(repeats):
            timing = through_server(client, k * repeats + j, tools)
            with lock:
                timings.append(timing)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return sum(t.tokens for t in timings) / wall, _median([t.first for t in timings])


def _median(values: list[float]) -> float:
    return statistics.median(values)


def with_the_demo_model(device: str | None, backend: str | None, repeats: int) -> None:
    from harmony_agent.agent.server import ServerConfig
    from harmony_agent.tools import FunctionTool, PythonTool

    agent = demo_agent(device, backend)
    config = ServerConfig(
        agent.model,
        model_name="demo",
        builtins={"python": lambda: PythonTool(dangerously_allow_unsandboxed=True)},
        sampling=agent.sampling,
        max_turn_tokens=256,
        agent_options={"current_date": agent.current_date},
    )
    convert = next(t for t in agent.tools if isinstance(t, FunctionTool))  # the client's now
    tools = [
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {
            "type": "function",
            "name": convert.name,
            "description": convert.description,
            "parameters": convert.parameters,
        },
    ]
    with serving(config) as client:
        through_server(client, 0, tools)  # warm up: kernel compile, allocations, prefix caches
        in_process(agent, 0)
        local, remote = [], []
        for i in range(repeats):
            local.append(in_process(agent, i + 1))
            remote.append(through_server(client, i + 1, tools))
        print(f"the demo model, one request ({remote[0].tokens} tokens; median of {repeats})")
        print(f"  {'':12s} {'first token':>12s} {'tokens/s':>9s} {'request':>10s}")
        for name, timings in (("in-process", local), ("server", remote)):
            first = _median([t.first for t in timings]) * 1e3
            rate = _median([t.rate for t in timings])
            total = _median([t.total for t in timings]) * 1e3
            print(f"  {name:12s} {first:9.1f} ms {rate:9.1f} {total:7.1f} ms")
        pairs = list(zip(remote, local, strict=True))
        extra = _median([r.total - t.total for r, t in pairs]) * 1e3
        extra_first = _median([r.first - t.first for r, t in pairs]) * 1e3
        print(f"  server: {extra:+.1f} ms a request, {extra_first:+.1f} ms to the first token")
        print("concurrent clients streaming (aggregate output tokens/s)")
        baseline = None
        for clients in (1, 4, 16):
            rate, first = concurrently(client, clients, repeats, tools)
            baseline = baseline or rate
            print(
                f"  {clients:2d} clients: {rate:7.1f} tokens/s ({rate / baseline:4.2f}x one "
                f"client), median first token {first * 1e3:7.1f} ms"
            )
    agent.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", help="cpu, cuda, ... (default: load_model's choice)")
    parser.add_argument(
        "--backend",
        choices=["torch", "triton"],
        default="torch",
        help="(default: torch, which batches concurrent requests)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="requests per measurement")
    args = parser.parse_args()
    without_a_model(requests=20)
    with_the_demo_model(args.device, args.backend, args.repeats)


if __name__ == "__main__":
    main()
