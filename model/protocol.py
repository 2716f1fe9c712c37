"""What the agent needs from a model: streamed token ids for a prompt."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen."""

    temperature: float = 1.0
    """Softmax temperature; 0 picks the most likely token (greedy)."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p."""
    seed: int | None = None
    """Seed for reproducible sampling; None draws a fresh one."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@runtime_checkable
class Model(Protocol):
    """A language model that continues a harmony prompt.

    A model may also have `max_context: int`, the most tokens its prompt and output can hold
    together: the agent then ends a run that fills it with status `max_context`.
    """

    def generate(
        self,
        prompt: Sequence[int],
        *,
        stop_tokens: Collection[int],
        max_tokens: int,
        sampling: Sampling = ...,
    ) -> Iterator[int]:
        """Stream the token ids that follow `prompt`.

        Ends after yielding a stop token (which is yielded, so a streaming parser sees it) or after
        `max_tokens` tokens. A caller may stop consuming at any point; the next call must still be
        correct. The iterator may have `cached_tokens`: how many prompt tokens a prefix cache
        held (the server reports it in usage).
        """
        ...
