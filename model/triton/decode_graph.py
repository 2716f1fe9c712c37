"""The one-token decode step as a CUDA graph: captured once, then replayed for every token.

At batch 1 a decode step is 10-11 kernels per layer (~380 for gpt-oss-120b), and launching
them one by one from Python costs about as much as running them. A graph launches them all at
once. Replay needs a step with fixed shapes and no host synchronisation: the token and its
position live in device tensors the graph reads, and the Triton kernels that write the KV cache
and attend over it read the position from memory (`rope_and_cache_` and `attention` given a
position tensor).

`DecodeStep` is the step of `OneSequence` (one sequence, a contiguous cache). `PagedDecodeGraphs`
does the same for the batching engine's steps of a few sequences over the page pool: one graph
per batch size bucket, the slots each row writes and reads copied into fixed buffers that the
graph's kernels read (`rope_and_write_` and `paged_attention` take them from memory).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ..transformer import Cache, KVCache, Transformer


class DecodeStep:
    """`step(token, position)` -> next-token logits (vocab,), in a buffer the next call reuses.

    capture=False runs the same step without a graph (on the CPU under the Triton interpreter,
    which is how the tests check it). The graph is captured at the first call, at that call's
    position: the warm-up runs (which compile the kernels outside the capture) write exactly the
    cache entries the step itself writes. A capture that fails warns once and leaves the step
    eager (capture launches nothing, so the cache is as the warm-up left it).
    """

    def __init__(self, transformer: Transformer, cache: KVCache, *, capture: bool) -> None:
        device = transformer.embedding.weight.device
        self.transformer, self.cache, self.capture = transformer, cache, capture
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def __call__(self, token: int, position: int) -> torch.Tensor:
        self.token.fill_(token)  # a fill kernel on the stream: no host copy, no sync
        self.position.fill_(position)
        if self.capture and self.graph is None:
            try:
                self._capture()
            except Exception as e:  # a driver or kernel that cannot be captured: go on eagerly
                # (a bug in the step itself still raises, from the eager run just below)
                warnings.warn(f"decoding without a CUDA graph: capture failed ({e})", stacklevel=2)
                self.capture = False
        if self.graph is None:
            return self._run()
        assert self.logits is not None
        with torch.cuda.device(self.token.device):
            self.graph.replay()
        return self.logits

    def _run(self) -> torch.Tensor:
        return self.transformer(self.token, self.position, self.cache, last_only=True)[0]

    def _capture(self) -> None:
        self.graph, self.logits = capture(self._run, self.token.device)


def capture(
    run: Callable[[], torch.Tensor], device: torch.device
) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """A graph of `run` and the buffer its output lands in at every replay. The two warm-up runs
    (which compile the kernels outside the capture) execute the step for real."""
    with torch.cuda.device(device):  # the model's GPU, not the current one
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
    return graph, out


Slots = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # a paged layer's write, read, firsts

BUCKETS = (1, 2, 4)
"""Batch sizes with a graph: up to `moe.DECODE_MAX_TOKENS` (the grouped MoE syncs with the host)."""


class PagedDecodeGraphs:
    """The batching engine's forward, `(tokens (B, T), start, cache, last_only)` -> logits, with
    its one-token steps of up to BUCKETS[-1] rows replayed from CUDA graphs; other calls (prefill
    chunks, bigger batches) run the model as they are.

    A step of B rows runs in the smallest bucket that holds it: the rows past B are padding that
    writes no key (slot -1) and attends to one, and their logits are dropped. Each bucket's graph
    is captured at the first step of its size, as `DecodeStep`'s. capture=False runs the same
    steps without graphs (on the CPU under the Triton interpreter, which is how the tests check
    them; set later, it stops replaying the captured ones); a capture that fails warns once and
    leaves every bucket eager.

    The cache of a step is read only through `layer(i).k`, `.v` and `.slots(window)`; layers that
    get the same slot tensors share one set of buffers.
    """

    def __init__(self, transformer: Transformer, *, max_context: int, capture: bool) -> None:
        self.transformer, self.max_context, self.capture = transformer, max_context, capture
        self.windows = [block.attn.window for block in transformer.block]
        self._buckets: dict[int, _Bucket] = {}

    @property
    def captured(self) -> bool:
        return any(b.graph is not None for b in self._buckets.values())

    def __call__(
        self,
        tokens: torch.Tensor,
        start: int | torch.Tensor = 0,
        cache: Cache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        b = tokens.shape[0]
        one_token_rows = tokens.dim() == 2 and tokens.shape[1] == 1
        if not one_token_rows or b > BUCKETS[-1] or not isinstance(start, torch.Tensor):
            return self.transformer(tokens, start, cache, last_only)
        assert cache is not None
        size = next(n for n in BUCKETS if n >= b)
        if size not in self._buckets:
            self._buckets[size] = _Bucket(self, size, cache)
        bucket = self._buckets[size]
        bucket.load(tokens, start, cache)
        if self.capture and bucket.graph is None:
            try:
                bucket.graph, bucket.logits = capture(bucket.run, tokens.device)
            except Exception as e:  # as DecodeStep: go on eagerly (a bug still raises below)
                warnings.warn(f"decoding without a CUDA graph: capture failed ({e})", stacklevel=2)
                self.capture = False
        if bucket.graph is None or not self.capture:
            return bucket.run()[:b]
        with torch.cuda.device(tokens.device):
            bucket.graph.replay()
        assert bucket.logits is not None
        return bucket.logits[:b]


class _Bucket:
    """The fixed buffers of one bucket size: tokens, starts, and per group of layers the slots."""

    def __init__(self, owner: PagedDecodeGraphs, size: int, cache: Cache) -> None:
        self.owner, self.size = owner, size
        device = owner.transformer.embedding.weight.device
        self.tokens = torch.zeros(size, 1, dtype=torch.long, device=device)
        self.starts = torch.zeros(size, dtype=torch.long, device=device)
        self.groups, _ = _slot_groups(cache, owner.windows)
        self.buffers: list[Slots] = []
        for i in (layers[0] for layers in self.groups):
            width = min(owner.max_context, owner.windows[i] or owner.max_context)
            self.buffers.append((torch.full((size,), -1, dtype=torch.long, device=device),
                                 torch.zeros(size, width, dtype=torch.long, device=device),
                                 torch.zeros(size, dtype=torch.long, device=device)))  # fmt: skip
        layers = [cache.layer(i) for i in range(len(owner.windows))]
        self.pages = _FixedPages(
            [lay.k for lay in layers], [lay.v for lay in layers], self.buffers, self.groups
        )
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def load(self, tokens: torch.Tensor, start: torch.Tensor, cache: Cache) -> None:
        """Copy this step's rows into the buffers; the padding rows write nothing, at position 0."""
        b = tokens.shape[0]
        groups, slots = _slot_groups(cache, self.owner.windows)
        if groups != self.groups:
            raise ValueError("the cache's layers share their slots differently than at capture")
        self.tokens[:b].copy_(tokens)
        self.starts[:b].copy_(start)
        self.starts[b:].zero_()
        for (w, r, f), (write, read, firsts) in zip(slots, self.buffers, strict=True):
            write[:b].copy_(w)
            write[b:].fill_(-1)
            read[:b, : r.shape[1]].copy_(r)
            firsts[:b].copy_(f)
            firsts[b:].zero_()

    def run(self) -> torch.Tensor:
        return self.owner.transformer(self.tokens, self.starts, self.pages)  # (size, 1, vocab)


def _slot_groups(cache: Cache, windows: list[int | None]) -> tuple[list[list[int]], list[Slots]]:
    """Layers grouped by the slot tensors the cache gives them (the same objects: one group),
    and each group's slots."""
    groups: dict[tuple[int, ...], list[int]] = {}
    slots: dict[tuple[int, ...], Slots] = {}
    for i, window in enumerate(windows):
        layer_slots = cache.layer(i).slots(window)  # type: ignore[attr-defined]
        key = tuple(id(t) for t in layer_slots)
        groups.setdefault(key, []).append(i)
        slots.setdefault(key, layer_slots)
    return list(groups.values()), list(slots.values())


class _FixedPages:
    """A cache with the page pool's tensors and the bucket's slot buffers (the graph's view)."""

    def __init__(
        self,
        k: list[torch.Tensor],
        v: list[torch.Tensor],
        buffers: list[Slots],
        groups: list[list[int]],
    ) -> None:
        self.k, self.v = k, v
        self.slots = {i: buf for buf, layers in zip(buffers, groups, strict=True) for i in layers}

    def layer(self, i: int) -> _FixedLayer:
        return _FixedLayer(self.k[i], self.v[i], self.slots[i])


class _FixedLayer:
    def __init__(self, k: torch.Tensor, v: torch.Tensor, slots: Slots) -> None:
        self.k, self.v, self._slots = k, v, slots

    def slots(self, window: int | None) -> Slots:
        return self._slots
