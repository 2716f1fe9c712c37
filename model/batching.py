"""Continuous batching: every running sequence decodes in one forward per step.

`generate()` may be called from many threads (each agent conversation streams from a worker
thread). There is no engine thread: a consumer that needs a token and finds no step running runs
one, for every sequence, and the others wait for its results. A step decodes one token of each
running sequence together, then prefills at most `prefill_chunk` prompt tokens, oldest prompts
first, so a long new prompt never stalls the sequences that are streaming. Sequences are
admitted in arrival order while the page pool holds their prompts; one that needs a page the
pool lacks preempts the newest running sequence, whose pages stay cached, so it resumes by
recomputing little or nothing.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

import torch

from .kv_pages import PagedBatch, PagePool, PageTable
from .protocol import Sampling
from .sampling import generator, sample
from .transformer import Transformer


@dataclass
class EngineStats:
    """Counts since the engine was made: what ran, and what the prefix cache saved."""

    prefill_tokens: int = 0
    """Prompt tokens that ran through the model (a preempted sequence's rerun included)."""
    decode_steps: int = 0
    """Batched one-token forwards."""
    decode_tokens: int = 0
    """Generated tokens those forwards ran (a prompt's last token, there, counts as prefill)."""
    reused_tokens: int = 0
    """Prompt tokens whose keys and values were found cached."""


@dataclass(eq=False)
class _Sequence:
    tokens: list[int]  # the prompt, then every sampled token
    stop: set[int]
    max_tokens: int
    sampling: Sampling
    generator: torch.Generator | None
    generated: int = 0
    table: PageTable | None = None
    out: deque[int] = field(default_factory=deque)
    done: bool = False
    cancelled: bool = False
    cached: int | None = None
    """Prompt tokens the prefix cache held when the sequence was first admitted."""

    @property
    def pending(self) -> int:
        """Tokens whose keys and values are not yet cached."""
        assert self.table is not None
        return len(self.tokens) - self.table.length


class TokenStream(Iterator[int]):
    """The tokens of one `generate()` call, and what the prefix cache saved it."""

    def __init__(self, tokens: Generator[int, None, None], seq: _Sequence) -> None:
        self._tokens, self._seq = tokens, seq

    def __next__(self) -> int:
        return next(self._tokens)

    def close(self) -> None:
        """Stop: the sequence is cancelled and its pages are released."""
        self._tokens.close()

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens whose keys and values were found cached (0 until it is admitted)."""
        return self._seq.cached or 0


class BatchEngine:
    """Sequences decoding together over one `PagePool`."""

    def __init__(
        self,
        transformer: Transformer,
        pool: PagePool,
        *,
        max_context: int,
        prefill_chunk: int,
        max_running: int = 64,
    ) -> None:
        self.transformer, self.pool = transformer, pool
        self.max_context, self.prefill_chunk, self.max_running = (
            max_context,
            prefill_chunk,
            max_running,
        )
        self.stats = EngineStats()
        self._cond = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._stepping = False

    def stream(
        self, prompt: list[int], stop: set[int], max_tokens: int, sampling: Sampling
    ) -> TokenStream:
        seq = _Sequence(prompt, stop, max_tokens, sampling, generator(sampling, self.pool.device))
        return TokenStream(self._tokens(seq), seq)

    def _tokens(self, seq: _Sequence) -> Generator[int, None, None]:
        # Queued at the first next(): a stream dropped unread never takes a place in a step.
        if seq.max_tokens <= 0:
            return
        with self._cond:
            self._waiting.append(seq)
        try:
            while True:
                with self._cond:
                    while not seq.out and not seq.done and self._stepping:
                        self._cond.wait()
                    token = seq.out.popleft() if seq.out else None
                    if token is None:
                        if seq.done:
                            return
                        self._stepping = True
                if token is not None:
                    yield token
                    continue
                try:
                    self._step()
                finally:
                    with self._cond:
                        self._stepping = False
                        self._cond.notify_all()
        finally:
            with self._cond:
                seq.cancelled = True
                if not self._stepping and seq in self._running:  # else the next step does it
                    self._finish(seq)

    def reset(self) -> None:
        """Forget the cached prefixes (running sequences keep theirs)."""
        with self._cond:
            while self._stepping:
                self._cond.wait()
            self.pool.forget()

    @torch.inference_mode()
    def _step(self) -> None:
        with self._cond:
            for seq in [s for s in self._running if s.cancelled or s.done]:
                self._finish(seq)
            self._admit()
            decoding = [s for s in self._running if s.pending == 1]
            prefilling = [s for s in self._running if s.pending > 1]
        chunks, budget = [], self.prefill_chunk  # prompt tokens per step, oldest prompts first
        for seq in prefilling:
            if budget <= 0:
                break
            chunks.append((seq, min(budget, seq.pending)))
            budget -= chunks[-1][1]
        kept = self._make_room([(s, 1) for s in decoding] + chunks)
        results: list[tuple[_Sequence, int]] = []
        if decoding := [s for s in decoding if s in kept]:
            results += self._decode(decoding)
        for seq, n in chunks:
            if seq in kept:
                results += self._prefill(seq, n)
        with self._cond:
            for seq, token in results:
                self._emit(seq, token)

    def _admit(self) -> None:
        """Move waiting sequences to running, in order, while their prompts fit."""
        while self._waiting and len(self._running) < self.max_running:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                continue
            table = self.pool.match(seq.tokens, limit=len(seq.tokens) - 1)
            # the whole prompt's full-attention pages; sliding-window ones as each chunk runs
            if not self.pool.reserve(table, len(seq.tokens), writing=table.length):
                self.pool.release(table, cache=False)  # (a copied page kept would evict others)
                return
            self._waiting.popleft()
            self.stats.reused_tokens += table.length
            if seq.cached is None:  # (not a preempted sequence's return)
                seq.cached = table.length
            seq.table = table
            self._running.append(seq)

    def _make_room(self, work: list[tuple[_Sequence, int]]) -> set[_Sequence]:
        """Each sequence gets the pages for its next `n` positions, in order, preempting the
        newest running ones where the pool lacks them; the sequences that keep their place."""
        kept = set()
        for seq, n in work:
            if seq.table is None:  # preempted for an earlier one
                continue
            end = seq.table.length + n  # (the full-attention pages cover the whole sequence)
            while not self.pool.reserve(seq.table, len(seq.tokens), writing=end):
                victim = self._running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                kept.add(seq)
        return {s for s in kept if s.table is not None}

    def _preempt(self, seq: _Sequence) -> None:
        with self._cond:
            assert seq.table is not None
            self.pool.release(seq.table)
            seq.table = None
            self._running.remove(seq)
            self._waiting.appendleft(seq)

    def _decode(self, seqs: list[_Sequence]) -> list[tuple[_Sequence, int]]:
        tables = [s.table for s in seqs]
        assert all(t is not None for t in tables)
        starts = [len(s.tokens) - 1 for s in seqs]
        device = self.pool.device
        tokens = torch.tensor([[s.tokens[-1]] for s in seqs], device=device)
        batch = PagedBatch(self.pool, tables, starts, 1)  # type: ignore[arg-type]
        logits = self.transformer(tokens, torch.tensor(starts, device=device), batch)[:, 0]
        self.stats.decode_steps += 1
        out = []
        for seq, row in zip(seqs, logits, strict=True):
            assert seq.table is not None
            if seq.generated:
                self.stats.decode_tokens += 1
            else:  # a prompt's last token, cached or prefilled up to it
                self.stats.prefill_tokens += 1
            self.pool.commit(seq.table, seq.tokens[-1:])
            out.append((seq, sample(row, seq.sampling, seq.generator)))
        return out

    def _prefill(self, seq: _Sequence, n: int) -> list[tuple[_Sequence, int]]:
        table = seq.table
        assert table is not None
        start = table.length
        chunk = seq.tokens[start : start + n]
        device = self.pool.device
        ids = torch.tensor([chunk], device=device)
        batch = PagedBatch(self.pool, [table], [start], len(chunk))
        logits = self.transformer(ids, start, batch, last_only=True)[0, 0]
        self.pool.commit(table, chunk)
        self.stats.prefill_tokens += len(chunk)
        if table.length < len(seq.tokens):
            return []  # more of the prompt to go
        return [(seq, sample(logits, seq.sampling, seq.generator))]

    def _emit(self, seq: _Sequence, token: int) -> None:
        assert seq.table is not None
        seq.tokens.append(token)
        seq.generated += 1
        seq.out.append(token)
        if (
            token in seq.stop
            or seq.generated >= seq.max_tokens
            or seq.table.length >= self.max_context  # a full context ends it like max_tokens
        ):
            seq.done = True

    def _finish(self, seq: _Sequence) -> None:
        seq.done = True
        if seq.table is not None:
            self.pool.release(seq.table)
            seq.table = None
        self._running.remove(seq)
