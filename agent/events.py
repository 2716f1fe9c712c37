"""What a streamed run reports, as it happens. Every event has a `type` to dispatch on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

from openai_harmony import Message

from harmony_agent.tools import ToolCall

if TYPE_CHECKING:
    from .result import RunResult


@dataclass(frozen=True)
class ReasoningDelta:
    """Text of the model's chain of thought (the analysis channel). Not meant for end users."""

    text: str
    type: Literal["reasoning.delta"] = "reasoning.delta"


@dataclass(frozen=True)
class CommentaryDelta:
    """Text the model addresses to the user before or between tool calls (a preamble)."""

    text: str
    type: Literal["commentary.delta"] = "commentary.delta"


@dataclass(frozen=True)
class FinalDelta:
    """Text of the final answer."""

    text: str
    type: Literal["final.delta"] = "final.delta"


@dataclass(frozen=True)
class ToolCallDelta:
    """Arguments of a tool call as the model writes them (code for python, JSON for functions)."""

    recipient: str
    text: str
    type: Literal["tool_call.delta"] = "tool_call.delta"


@dataclass(frozen=True)
class ModelProgress:
    """The model is at work: sent as each model call starts (before it reads the prompt), then,
    as tokens come, at most every tenth of a second, whether or not they show as text."""

    step: int
    """The model call, counted from 1 in this run."""
    tokens: int
    """Tokens the model has generated in this run so far."""
    type: Literal["model.progress"] = "model.progress"


@dataclass(frozen=True)
class ToolCalled:
    """The model finished a tool call; the tool runs next."""

    call: ToolCall
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True)
class ToolResult:
    """A tool answered (or failed: `is_error`); `output` is exactly what the model will read."""

    call: ToolCall
    output: str
    is_error: bool
    seconds: float
    type: Literal["tool_result"] = "tool_result"


@dataclass(frozen=True)
class MessageAdded:
    """A complete message joined the conversation (the model's, a tool's, or the user's)."""

    message: Message
    type: Literal["message"] = "message"


@dataclass(frozen=True)
class RunDone:
    """The run ended; `result.status` says why."""

    result: RunResult
    type: Literal["done"] = "done"


AgentEvent: TypeAlias = (
    ReasoningDelta
    | CommentaryDelta
    | FinalDelta
    | ToolCallDelta
    | ModelProgress
    | ToolCalled
    | ToolResult
    | MessageAdded
    | RunDone
)
