"""Models: the protocol the agent talks to, gpt-oss checkpoints, and a scripted stand-in."""

from typing import TYPE_CHECKING, Any

from harmony_agent.encoding import EncodingError, harmony_encoding

from .protocol import Model, Sampling
from .scripted import ScriptedModel, ScriptExhausted

if TYPE_CHECKING:
    from .loading import load_model

__all__ = [
    "EncodingError",
    "Model",
    "Sampling",
    "ScriptExhausted",
    "ScriptedModel",
    "harmony_encoding",
    "load_model",
]


def __getattr__(name: str) -> Any:
    # torch is heavy: import it only when a checkpoint is actually loaded.
    if name == "load_model":
        from .loading import load_model

        return load_model
    raise AttributeError(f"module 'model' has no attribute {name!r}")
