"""The one-token decode step as a CUDA graph: captured once, then replayed for every token.

At batch 1 a decode step is 10-11 kernels per layer (~380 for gpt-oss-120b), and launching
them one by one from Python costs about as much as running them. A graph launches them all at
once. Replay needs a step with fixed shapes and no host synchronisation: the token and its
position live in device tensors the graph reads, and the Triton kernels that write the KV cache
and attend over it read the position from memory (`rope_and_cache_` and `attention` given a
position tensor).
"""

from __future__ import annotations

import warnings

import torch

from ..transformer import KVCache, Transformer


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
        with torch.cuda.device(self.token.device):  # the model's GPU, not the current one
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
                for _ in range(2):
                    self._run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.logits = self._run()
        self.graph = graph
