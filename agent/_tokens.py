"""Run a model's blocking token generator off the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass

from harmony_agent.model import Model, Sampling


@dataclass
class _Failed:
    error: BaseException


_END = object()


async def stream_tokens(
    model: Model,
    prompt: Sequence[int],
    *,
    stop_tokens: Collection[int],
    max_tokens: int,
    sampling: Sampling,
) -> AsyncIterator[int]:
    """Yield `model.generate(...)`'s tokens while it runs in a worker thread.

    The event loop stays free for async tools and the program around the agent. Closing this
    iterator early stops the generator after the token in flight and waits for it, so the model
    never runs two generations at once.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            tokens = model.generate(
                prompt, stop_tokens=stop_tokens, max_tokens=max_tokens, sampling=sampling
            )
            try:
                for token in tokens:
                    loop.call_soon_threadsafe(queue.put_nowait, token)
                    if stop.is_set():
                        break
            finally:
                close = getattr(tokens, "close", None)
                if close is not None:
                    close()
        except BaseException as e:  # handed to the consumer, who re-raises it
            loop.call_soon_threadsafe(queue.put_nowait, _Failed(e))
        loop.call_soon_threadsafe(queue.put_nowait, _END)

    thread = threading.Thread(target=produce, name="harmony-agent-generate", daemon=True)
    thread.start()
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        # Blocks for at most the token being computed; the next step must not overlap it.
        thread.join()
