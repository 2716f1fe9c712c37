"""The single-sequence engine (`load_model(..., batching=False)`): one sequence in one contiguous
KV cache, one-token steps through `DecodeStep` (a CUDA graph on a GPU).

The cache holds the keys and values of `self.cached` (exactly those tokens, after every yielded
token). A new prompt reuses its longest common prefix with them, even when it diverges
mid-prefix. A second `generate()` supersedes the first: its generator refuses to resume.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .batching import EngineStats
from .protocol import Sampling
from .sampling import generator, sample
from .transformer import KVCache, Transformer
from .triton.decode_graph import DecodeStep


class OneSequence:
    def __init__(
        self, transformer: Transformer, *, max_context: int, prefill_chunk: int, cuda_graph: bool
    ) -> None:
        self.transformer = transformer
        self.max_context, self.prefill_chunk, self.cuda_graph = (
            max_context,
            prefill_chunk,
            cuda_graph,
        )
        self.stats = EngineStats()
        self._step: DecodeStep | None = None
        self.cache: KVCache | None = None
        self.cached: list[int] = []
        self._epoch = 0  # bumped by every stream(): an older, abandoned generator must not resume

    @property
    def device(self) -> torch.device:
        return self.transformer.embedding.weight.device

    def reset(self) -> None:
        """Forget the cached tokens (the buffers stay allocated)."""
        self.cached = []

    def stream(
        self, prompt: list[int], stop: set[int], max_tokens: int, sampling: Sampling
    ) -> Iterator[int]:
        self._epoch += 1
        return self._stream(prompt, stop, max_tokens, sampling, self._epoch)

    @torch.inference_mode()
    def _stream(
        self, prompt: list[int], stop: set[int], max_tokens: int, sampling: Sampling, epoch: int
    ) -> Iterator[int]:
        if max_tokens <= 0:
            return
        gen = generator(sampling, self.device)
        logits = self.prefill(prompt)
        for n in range(max_tokens):
            token = sample(logits, sampling, gen)
            yield token  # the cache holds exactly self.cached here, `token` not yet included
            if epoch != self._epoch:
                raise RuntimeError("this generator was superseded by a newer generate() call")
            if token in stop or n == max_tokens - 1 or len(self.cached) >= self.max_context:
                return  # (a full context ends generation like max_tokens would)
            logits = self._forward([token])

    def prefill(self, tokens: list[int]) -> torch.Tensor:
        """Make the cache hold `tokens`, reusing the common prefix -> next-token logits (vocab,)."""
        keep = 0
        for a, b in zip(self.cached, tokens, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)  # at least one token must run to give logits
        self.stats.reused_tokens += keep
        self.stats.prefill_tokens += len(tokens) - keep
        del self.cached[keep:]
        logits = None
        for i in range(keep, len(tokens), self.prefill_chunk):
            logits = self._forward(tokens[i : i + self.prefill_chunk])
        assert logits is not None
        return logits

    def _forward(self, tokens: list[int]) -> torch.Tensor:
        """Append `tokens` to the cache -> logits of the last one, valid until the next call
        (a CUDA graph reuses its buffer); the bookkeeping moves only once the forward completed."""
        start = len(self.cached)
        if self.cache is None:
            self.cache = KVCache(self.transformer.config, self.max_context, self.device,
                                 self.transformer.embedding.weight.dtype)  # fmt: skip
        if len(tokens) == 1 and self.cuda_graph:
            if self._step is None:
                capture = self.device.type == "cuda"
                self._step = DecodeStep(self.transformer, self.cache, capture=capture)
            logits = self._step(tokens[0], start)
        else:
            ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
            logits = self.transformer(ids, start, self.cache, last_only=True)[0]
        self.cached.extend(tokens)
        return logits
