"""The agent loop's own cost, without a model: per-step overhead and streaming throughput.

    python benchmarks/agent_loop.py

ScriptedModel generates at no cost, so what is measured is the loop: rendering the prompt,
moving tokens from the model thread, parsing them, dispatching tools and building messages.
"""

from __future__ import annotations

import statistics
import time

from openai_harmony import Role, StreamableParser

from harmony_agent.agent import Agent
from harmony_agent.model import ScriptedModel, harmony_encoding
from harmony_agent.tools import function_tool


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


CALL = (
    "<|channel|>analysis<|message|>I should add the numbers with the tool.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.add <|constrain|>json<|message|>"
    '{"a": 2, "b": 3}<|call|>'
)
FINAL = "<|channel|>final<|message|>The answer is 5.<|return|>"
LONG = (
    "<|channel|>final<|message|>"
    + "The quick brown fox jumps over the lazy dog. " * 2000
    + ("<|return|>")
)


def step_overhead(steps: int, repeats: int = 5) -> tuple[float, int]:
    """Median milliseconds per step of a run of `steps` tool calls and a final answer."""
    timings = []
    for _ in range(repeats):
        agent = Agent(ScriptedModel([CALL] * steps + [FINAL]), tools=[add], max_steps=steps + 1)
        result = agent.run("What is 2 + 3?")
        assert result.status == "completed"
        timings.append((result.usage.seconds - result.usage.tool_seconds) / result.usage.steps)
        agent.close()
    return statistics.median(timings) * 1e3, result.usage.prompt_tokens // result.usage.steps


def parser_throughput() -> float:
    encoding = harmony_encoding()
    tokens = encoding.encode(LONG, allowed_special="all")
    started = time.perf_counter()
    parser = StreamableParser(encoding, Role.ASSISTANT)
    for token in tokens:
        parser.process(token)
        _ = parser.last_content_delta
    return len(tokens) / (time.perf_counter() - started)


def loop_throughput() -> tuple[float, int]:
    agent = Agent(ScriptedModel([LONG]), max_turn_tokens=100_000)
    started = time.perf_counter()
    result = agent.run("Write a lot.")
    seconds = time.perf_counter() - started
    assert result.status == "completed"
    return result.usage.output_tokens / seconds, result.usage.output_tokens


def main() -> None:
    harmony_encoding()  # load once, outside the timings
    print("agent loop overhead (ScriptedModel, model time ~0)")
    for steps in (1, 8, 32):
        ms, prompt = step_overhead(steps)
        print(f"  {steps + 1:3d} steps: {ms:6.2f} ms per step (mean prompt {prompt} tokens)")
    print(f"StreamableParser alone:          {parser_throughput():10,.0f} tokens/s")
    tps, n = loop_throughput()
    print(
        f"whole loop, one {n}-token turn: {tps:10,.0f} tokens/s (thread bridge + parser + events)"
    )


if __name__ == "__main__":
    main()
