"""Token generation for the PyTorch gpt-oss: KV cache reuse, chunked prefill, sampling."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import torch

from .config import ModelConfig
from .protocol import Sampling
from .transformer import KVCache, Transformer
from .triton.decode_graph import DecodeStep


class GptOss:
    """A loaded gpt-oss model: `.logits(tokens)` and `.generate(prompt, ...)` (the Model protocol).

    One KV cache, allocated on first use for `max_context` positions and updated in place, holds
    the keys and values of `self.cached` (exactly those tokens, after every yielded token). A new
    prompt reuses its longest common prefix with them, even when it diverges mid-prefix.
    """

    def __init__(
        self,
        transformer: Transformer,
        *,
        max_context: int | None = None,
        prefill_chunk: int = 256,
        cuda_graph: bool = False,
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
        self.prefill_chunk = prefill_chunk
        # One-token steps through `DecodeStep` (the Triton backend): a CUDA graph on a GPU.
        self.cuda_graph = cuda_graph
        self._step: DecodeStep | None = None
        self.cache: KVCache | None = None
        self.cached: list[int] = []
        self._epoch = 0  # bumped by every generate(): an older, abandoned generator must not resume
        self._keepalive = keepalive  # memory-mapped checkpoint files backing the weights

    @property
    def graph_captured(self) -> bool:
        """Whether one-token steps replay a captured CUDA graph (after the first one)."""
        return self._step is not None and self._step.graph is not None

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
        """Forget the cached tokens (the buffers stay allocated)."""
        self.cached = []

    def generate(
        self,
        prompt: Sequence[int],
        *,
        stop_tokens: Collection[int],
        max_tokens: int,
        sampling: Sampling = Sampling(),  # noqa: B008 (frozen dataclass)
    ) -> Iterator[int]:
        """Stream the tokens that follow `prompt`, the stop token included."""
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
        self._epoch += 1
        return self._generate(prompt, set(stop_tokens), max_tokens, sampling, self._epoch)

    @torch.inference_mode()
    def _generate(
        self, prompt: list[int], stop: set[int], max_tokens: int, sampling: Sampling, epoch: int
    ) -> Iterator[int]:
        if max_tokens <= 0:
            return
        gen = None
        if sampling.temperature > 0:
            gen = torch.Generator(device=self.device)
            if sampling.seed is None:
                gen.seed()
            else:
                gen.manual_seed(sampling.seed)
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
        if start + len(tokens) > self.max_context:
            raise ValueError(
                f"context of {start + len(tokens)} tokens exceeds max_context ({self.max_context})"
            )
        if self.cache is None:
            self.cache = KVCache(self.config, self.max_context, self.device, self.dtype)
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


def sample(logits: torch.Tensor, sampling: Sampling, gen: torch.Generator | None) -> int:
    """Greedy at temperature 0, else temperature + nucleus (top-p) sampling."""
    if sampling.temperature == 0 or gen is None:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        p, idx = probs.sort(descending=True)
        keep = p.cumsum(0) - p < sampling.top_p  # the smallest prefix whose mass reaches top_p
        p = p * keep
        choice = torch.multinomial(p / p.sum(), 1, generator=gen)
        return int(idx[choice])
    return int(torch.multinomial(probs, 1, generator=gen))
