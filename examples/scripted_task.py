"""A scripted task: run an agent from Python, stream its events, keep a transcript.

python examples/scripted_task.py                       # replays a scripted model
python examples/scripted_task.py /path/to/gpt-oss-20b  # the same task on real weights
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from harmony_agent.agent import Agent, load_transcript
from harmony_agent.model import ScriptedModel, load_model
from harmony_agent.tools import function_tool

INVOICE = {"A-17": 120.0, "B-03": 75.5, "C-44": 310.25}


@function_tool
def invoice_total(invoice_id: str) -> float:
    """The amount due on an invoice.

    Args:
        invoice_id: The invoice number, e.g. "A-17".
    """
    return INVOICE[invoice_id]


def scripted() -> ScriptedModel:
    """What gpt-oss typically writes for this task, for a run without weights."""
    calls = [
        "<|channel|>analysis<|message|>I need each invoice total, then the sum.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.invoice_total "
        f'<|constrain|>json<|message|>{{"invoice_id": "{i}"}}<|call|>'
        for i in INVOICE
    ]
    return ScriptedModel([*calls, "<|channel|>final<|message|>The three invoices total "
                          "505.75.<|return|>"])  # fmt: skip


def main() -> int:
    model = load_model(sys.argv[1]) if len(sys.argv) > 1 else scripted()
    agent = Agent(
        model,
        tools=[invoice_total],
        instructions="Look amounts up with the tools; never guess them.",
        reasoning_effort="low",
    )
    transcript = Path(tempfile.mkdtemp()) / "invoices.jsonl"
    for event in agent.stream("What is the total of invoices A-17, B-03 and C-44?",
                              transcript=transcript):  # fmt: skip
        if event.type == "tool_call":
            print(f"-> {event.call.recipient}({event.call.arguments})")
        elif event.type == "tool_result":
            print(f"<- {event.output}")
        elif event.type == "done":
            result = event.result
            print(f"{result.status}: {result.final}")
            print(f"{len(load_transcript(transcript))} messages saved to {transcript}")
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
