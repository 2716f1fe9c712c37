"""What a server serves and its limits."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harmony_agent.model import Model, Sampling
from harmony_agent.tools import BuiltinTool

from ..toolbox import Tool


@dataclass
class ServerConfig:
    """The model and tools behind the server, the defaults of a request, and the limits."""

    model: Model
    """What generates: a checkpoint from `load_model`, or a `ScriptedModel`."""
    model_name: str = "gpt-oss"
    """The name clients ask for (`model` in a request); others get 404."""
    tools: Sequence[Tool] = ()
    """Tools the server runs for every conversation: its own function tools, plugins."""
    builtins: Mapping[str, Callable[[], BuiltinTool]] = field(default_factory=dict)
    """The built-in tools a client may use, `"python"` and `"browser"`, as factories: each
    conversation gets its own (its kernel's variables, its browser's pages)."""
    instructions: str | None = None
    """Developer instructions put before each client's own."""
    reasoning_effort: str = "medium"
    """When the request names none."""
    sampling: Sampling = field(default_factory=Sampling)
    """When the request names none (temperature, top_p)."""
    max_steps: int = 32
    """Model calls per response (tool calls run here each cost one)."""
    max_output_tokens: int | None = None
    """Tokens one response may generate in all; a request may ask for fewer. None: no cap
    but the model's context."""
    max_turn_tokens: int = 8192
    """Tokens one model call may generate."""
    api_key: str | None = None
    """The bearer key every /v1 request must carry; None: no authentication."""
    max_running: int = 16
    """Responses generated at once; the engine decodes them together."""
    max_waiting: int = 64
    """Requests waiting for a turn beyond those; more are refused with 429."""
    max_request_bytes: int = 16 << 20
    """Larger request bodies are refused with 413."""
    max_stored: int = 1000
    """Responses kept for `previous_response_id` (least recently used dropped first)."""
    max_tool_sessions: int = 8
    """Conversations whose built-in tools (kernels, browsers) are kept alive at once."""
    agent_options: Mapping[str, Any] = field(default_factory=dict)
    """More `Agent` fields for every run: `current_date`, `knowledge_cutoff`, ..."""
    seal_key: bytes | None = None
    """Key of the reasoning items' integrity check; None draws one per server run."""
