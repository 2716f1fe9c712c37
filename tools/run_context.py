"""What a function tool may see of the run that called it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from openai_harmony import Message

T = TypeVar("T")


@dataclass(frozen=True)
class RunContext(Generic[T]):
    """Passed to a function tool whose first parameter is typed `RunContext` (or
    `RunContext[MyState]`). That parameter is left out of the tool's schema: the model neither
    sees nor fills it.
    """

    context: T
    """The object given to `Agent.run(..., context=...)`, None when none was: a database handle,
    the user's id, state the tools of one run share."""
    messages: Sequence[Message]
    """The conversation so far: the history, the user's message and the model's messages up to
    and including this call."""
    recipient: str
    """Who was called, e.g. `functions.lookup`."""
