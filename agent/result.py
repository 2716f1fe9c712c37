"""What a run produced and why it ended."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeAlias

from openai_harmony import Message

Status: TypeAlias = Literal[
    "completed",  # the model gave a final answer
    "max_steps",  # the step limit (model calls per run) was reached
    "max_turn_tokens",  # one model call produced its token limit without finishing
    "max_total_tokens",  # the run's token budget was spent
    "max_context",  # the conversation filled the model's context window (its max_context)
    "invalid_output",  # the model's output could not be understood (malformed harmony, ...)
]


@dataclass
class Usage:
    """Counts and timings of one run."""

    steps: int = 0
    """Model calls."""
    prompt_tokens: int = 0
    """Prompt tokens over all steps (including the part the model served from its cache)."""
    output_tokens: int = 0
    """Tokens the model generated."""
    tool_calls: int = 0
    model_seconds: float = 0.0
    """Time spent waiting for tokens."""
    tool_seconds: float = 0.0
    """Time spent in tools."""
    seconds: float = 0.0
    """Wall time of the run."""
    context_tokens: int = 0
    """Tokens the conversation fills after the last model call: its prompt and output."""
    context_limit: int | None = None
    """The model's `max_context`, when it declares one."""

    @property
    def tokens_per_second(self) -> float:
        """Generation speed as the agent saw it (prefill included)."""
        return self.output_tokens / self.model_seconds if self.model_seconds else 0.0


@dataclass
class RunResult:
    """The outcome of `Agent.run`: pass it as `history=` to continue the conversation."""

    final: str | None
    """The final answer, or None when the run ended without one."""
    status: Status
    detail: str | None = None
    """Why the run ended, in words, when it did not complete."""
    messages: list[Message] = field(default_factory=list)
    """The conversation after the system and developer messages: the user's messages, the model's
    messages and the tool results, earlier turns included."""
    usage: Usage = field(default_factory=Usage)
    raw: str | None = None
    """What the last model call generated after its last complete message, decoded with the
    special tokens written out: output that was invalid or cut off by a limit, which no message
    holds. None when every token generated belongs to a message in `messages`."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: final answer, status, messages (harmony's dict form), usage and
        the raw output (null when there is none)."""
        return {
            "final": self.final,
            "status": self.status,
            "detail": self.detail,
            "messages": [m.to_dict() for m in self.messages],
            "usage": asdict(self.usage),
            "raw": self.raw,
        }
