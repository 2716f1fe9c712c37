"""The harmony agent loop: `Agent`, its events, results and transcripts."""

from .agent import Agent
from .events import (
    AgentEvent,
    CommentaryDelta,
    FinalDelta,
    MessageAdded,
    ModelProgress,
    ReasoningDelta,
    RunDone,
    ToolCallDelta,
    ToolCalled,
    ToolResult,
)
from .hooks import AgentHooks
from .result import RunResult, Status, Usage
from .transcript import TranscriptError, load_transcript

__all__ = [
    "Agent",
    "AgentEvent",
    "AgentHooks",
    "CommentaryDelta",
    "FinalDelta",
    "MessageAdded",
    "ModelProgress",
    "ReasoningDelta",
    "RunDone",
    "RunResult",
    "Status",
    "ToolCallDelta",
    "ToolCalled",
    "ToolResult",
    "TranscriptError",
    "Usage",
    "load_transcript",
]
