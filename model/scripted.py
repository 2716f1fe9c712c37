"""A model that plays back scripted completions: test agents and tools without weights."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterator, Sequence

from harmony_agent.encoding import harmony_encoding

from .protocol import Sampling


class ScriptExhausted(RuntimeError):
    """`ScriptedModel.generate` was called more often than it has turns."""


class ScriptedModel:
    """Streams one scripted turn per `generate` call.

    Each turn is a raw harmony completion, what the model would emit after `<|start|>assistant`,
    with special tokens written out, e.g.
    `"<|channel|>final<|message|>Hello!<|return|>"`; or a list of token ids. Generation stops
    after the first stop token or `max_tokens`, as a real model's would. Every prompt received is
    kept in `.prompts` (lists of token ids). `delay` waits that many seconds before each token,
    to watch or interrupt a streaming interface.
    """

    def __init__(self, turns: Sequence[str | Sequence[int]], *, delay: float = 0.0) -> None:
        encoding = harmony_encoding()
        self.turns: list[list[int]] = [
            encoding.encode(t, allowed_special="all") if isinstance(t, str) else list(t)
            for t in turns
        ]
        self.prompts: list[list[int]] = []
        self.delay = delay
        self._lock = threading.Lock()  # concurrent callers (a batch, a server) take turns in order

    @property
    def remaining(self) -> int:
        """Turns not yet played."""
        return len(self.turns) - len(self.prompts)

    def generate(
        self,
        prompt: Sequence[int],
        *,
        stop_tokens: Collection[int],
        max_tokens: int,
        sampling: Sampling = Sampling(),  # noqa: B008 - frozen dataclass, safe as default
    ) -> Iterator[int]:
        # Check eagerly (not inside the generator) so the error surfaces at the call.
        with self._lock:
            if self.remaining <= 0:
                raise ScriptExhausted(
                    f"ScriptedModel ran out of turns: generate() called {len(self.prompts) + 1} "
                    f"times but only {len(self.turns)} turns were scripted"
                )
            turn = self.turns[len(self.prompts)]
            self.prompts.append(list(prompt))
        return self._stream(turn, set(stop_tokens), max_tokens)

    def _stream(self, turn: list[int], stop_tokens: set[int], max_tokens: int) -> Iterator[int]:
        for token in turn[:max_tokens]:
            if self.delay:
                time.sleep(self.delay)
            yield token
            if token in stop_tokens:
                return
