"""The loaded gpt-oss as a `Model`: validation, then an engine that generates.

By default both backends batch: `BatchEngine` decodes every concurrent `generate()` together
over one page pool, with the prefixes of earlier prompts cached; on the Triton backend its
one-token steps of up to four sequences replay CUDA graphs (`PagedDecodeGraphs`). `batching=False`
runs `OneSequence` instead: one generation at a time in a contiguous cache (`DecodeStep`'s graph).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence

import torch

from .batching import BatchEngine, EngineStats
from .config import ModelConfig
from .kv_pages import PAGE_SIZE, PagePool, layer_groups
from .one_sequence import OneSequence
from .protocol import Sampling
from .transformer import KVCache, Transformer
from .triton.decode_graph import PagedDecodeGraphs


class GptOss:
    """A loaded gpt-oss model: `.logits(tokens)` and `.generate(prompt, ...)` (the Model protocol).

    `cache_tokens` (batching only) sizes the page pool that all sequences share: the running
    ones' tokens and the cached prefixes of finished ones, as that many positions of every
    layer. Sliding-window layers hold only their window of a running sequence, so the pool holds
    more tokens than that. It must hold at least `max_context` so that any one sequence fits;
    the default, twice that, keeps two long conversations cached.
    `cuda_graph` (Triton backend): decode steps replayed as CUDA graphs, by either engine.
    """

    def __init__(
        self,
        transformer: Transformer,
        *,
        max_context: int | None = None,
        prefill_chunk: int = 256,
        cuda_graph: bool = False,
        batching: bool = True,
        cache_tokens: int | None = None,
        keepalive: object = None,
    ) -> None:
        self.transformer = transformer
        self.config: ModelConfig = transformer.config
        # A GPU has room for long agent conversations (browsed pages are long); 32768 tokens of
        # gpt-oss-120b cache is 2.3 GiB. On a CPU, prefill speed is the limit anyway.
        default = 32768 if self.device.type == "cuda" else 8192
        self.max_context = max_context or min(self.config.context_length, default)
        if not 1 <= self.max_context <= self.config.context_length:
            raise ValueError(
                f"max_context must be between 1 and the model's context length "
                f"{self.config.context_length}, got {self.max_context}"
            )
        self.cache_tokens = cache_tokens or 2 * self.max_context
        if self.cache_tokens < self.max_context:
            raise ValueError(
                f"cache_tokens ({self.cache_tokens}) must hold at least max_context "
                f"({self.max_context})"
            )
        self.prefill_chunk = prefill_chunk
        self.batching = batching
        self._cuda_graph = cuda_graph
        self._engine: BatchEngine | OneSequence | None = None
        self._lock = threading.Lock()
        self._keepalive = keepalive  # memory-mapped checkpoint files backing the weights

    @property
    def engine(self) -> BatchEngine | OneSequence:
        """Made at first use: the cache is allocated then, not at load time."""
        with self._lock:
            if self._engine is None:
                if self.batching:
                    # cache_tokens positions of every layer, in pages of one group of layers each
                    pages = len(layer_groups(self.config)) * -(-self.cache_tokens // PAGE_SIZE)
                    pool = PagePool(self.config, pages, self.device, self.dtype)
                    forward: Transformer | PagedDecodeGraphs = self.transformer
                    if self._cuda_graph:
                        forward = PagedDecodeGraphs(self.transformer, max_context=self.max_context,
                                                    capture=self.device.type == "cuda")  # fmt: skip
                    # (the engine only calls its forward: the graphs stand in for the model)
                    self._engine = BatchEngine(forward, pool, max_context=self.max_context,  # type: ignore[arg-type]
                                               prefill_chunk=self.prefill_chunk)  # fmt: skip
                else:
                    self._engine = OneSequence(self.transformer, max_context=self.max_context,
                                               prefill_chunk=self.prefill_chunk,
                                               cuda_graph=self._cuda_graph)  # fmt: skip
            return self._engine

    @property
    def stats(self) -> EngineStats:
        return self.engine.stats

    @property
    def graph_captured(self) -> bool:
        """Whether one-token steps replay a captured CUDA graph (after the first one)."""
        engine = self._engine
        if isinstance(engine, OneSequence):
            return engine._step is not None and engine._step.graph is not None
        forward = None if engine is None else engine.transformer
        return isinstance(forward, PagedDecodeGraphs) and forward.captured

    @property
    def device(self) -> torch.device:
        return self.transformer.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.embedding.weight.dtype

    @torch.inference_mode()
    def logits(self, tokens: Sequence[int]) -> torch.Tensor:
        """A fresh, uncached forward: (len(tokens), vocab) logits, in fp32."""
        if len(tokens) == 0:
            raise ValueError("tokens must not be empty")
        ids = torch.tensor(list(tokens), dtype=torch.long, device=self.device)
        if len(ids) <= self.prefill_chunk:
            return self.transformer(ids).float()
        # long inputs: chunks through a scratch cache bound the (heads, T, S) attention scores
        cache = KVCache(self.config, len(ids), self.device, self.dtype)
        step = self.prefill_chunk
        parts = [
            self.transformer(ids[i : i + step], i, cache).float() for i in range(0, len(ids), step)
        ]
        return torch.cat(parts)

    def reset(self) -> None:
        """Forget the cached prompts."""
        self.engine.reset()

    def generate(
        self,
        prompt: Sequence[int],
        *,
        stop_tokens: Collection[int],
        max_tokens: int,
        sampling: Sampling = Sampling(),  # noqa: B008 (frozen dataclass)
    ) -> Iterator[int]:
        """Stream the tokens that follow `prompt`, the stop token included. Safe to call from
        many threads at once; each generator may be consumed, or dropped, independently."""
        prompt = list(prompt)
        if not prompt:
            raise ValueError("prompt must not be empty")
        if len(prompt) >= self.max_context:
            raise ValueError(
                f"the prompt has {len(prompt)} tokens, the model's context holds {self.max_context}"
                " (load_model's max_context)"
            )
        vocab = self.config.vocab_size
        if bad := [t for t in prompt if not 0 <= t < vocab]:
            raise ValueError(f"token id {bad[0]} is outside the model's vocabulary of {vocab}")
        return self.engine.stream(prompt, set(stop_tokens), max_tokens, sampling)
