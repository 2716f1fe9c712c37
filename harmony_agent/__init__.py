"""harmony-agent: OpenAI's open-weight gpt-oss models as agents, on your own hardware.

The short paths of the public names; each lives in its part of the package:

- `harmony_agent.agent`: `Agent`, its events, results, hooks and transcripts;
- `harmony_agent.model`: `load_model`, `Sampling`, `ScriptedModel` and the Model protocol;
- `harmony_agent.tools`: `function_tool`, `RunContext`, `PythonTool`, `BrowserTool`, plugins;
- `harmony_agent.sandbox`: process isolation for model-written code.

Names are imported on first use: `import harmony_agent` loads neither torch nor a browser.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agent import Agent
    from .model import Sampling, ScriptedModel, load_model
    from .tools import BrowserTool, PythonTool, RunContext, function_tool

_WHERE = {
    "Agent": "agent",
    "load_model": "model",
    "Sampling": "model",
    "ScriptedModel": "model",
    "function_tool": "tools",
    "RunContext": "tools",
    "PythonTool": "tools",
    "BrowserTool": "tools",
}
__all__ = [
    "Agent",
    "BrowserTool",
    "PythonTool",
    "RunContext",
    "Sampling",
    "ScriptedModel",
    "function_tool",
    "load_model",
]


def __getattr__(name: str) -> Any:
    part = _WHERE.get(name)
    if part is None:
        raise AttributeError(f"module 'harmony_agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{part}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
