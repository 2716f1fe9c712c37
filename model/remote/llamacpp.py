"""llama.cpp's `llama-server`: `POST /completion` with the prompt as token ids.

Mapping (the server's README, checked against llama-server from llama-cpp-python 0.3.36's tree):
`n_predict` = max_tokens; `temperature` (0 is greedy) and `top_p` run in that order and nothing
else (`samplers`), so its defaults (top_k 40, min_p 0.05, repetition penalties) stay out;
`seed` (-1: random); `cache_prompt` reuses the KV cache of the common prefix; the stream's
events carry `tokens`. llama.cpp ends generation itself at its end-of-generation tokens (for
gpt-oss: `<|return|>` and `<|call|>`, the agent's stop tokens); other stop tokens end the
stream here.

One quirk is repaired: a streamed event is withheld while the text so far ends inside a UTF-8
character, so the ids of tokens that end mid-character never arrive (the next event carries
their text, but only its own id). `tokens_predicted` counts them, so a gap is seen: the stream
is closed and the missing stretch is fetched unstreamed (`n_predict` = the gap), which returns
every id; then streaming resumes after it. Greedy decoding regenerates the same tokens; when
sampling, the stretch is a fresh sample of the same positions (no id was yielded for them).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any

from ..protocol import Sampling
from ._http import PROBE, Chunk, RemoteEngineError, RemoteModel

_SEED_RANDOM = -1


class LlamaCppModel(RemoteModel):
    """A gpt-oss GGUF served by `llama-server` (`load_model(url, engine="llamacpp")`)."""

    engine = "llamacpp"
    display = "llama.cpp"
    generate_path = "/completion"

    def _connect(self) -> int | None:
        health = self.endpoint.request("GET", "/health")
        if health is None:
            raise RemoteEngineError(f"{self.url} is not a llama.cpp server (no /health)")
        tokens = self.endpoint.request("POST", "/tokenize",
                                       {"content": PROBE, "add_special": False,
                                        "parse_special": True})  # fmt: skip
        if tokens is not None:
            self._check_vocabulary(tokens.get("tokens"))
        props = self.endpoint.request("GET", "/props") or {}
        n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
        return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None

    def _request(
        self,
        prompt: list[int],
        stop_tokens: list[int],
        max_tokens: int,
        sampling: Sampling,
        *,
        stream: bool = True,
    ) -> dict[str, Any]:
        return {
            "prompt": prompt,
            "n_predict": max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "samplers": ["temperature", "top_p"],
            "seed": _SEED_RANDOM if sampling.seed is None else sampling.seed,
            "cache_prompt": True,
            "return_tokens": True,
            "stream": stream,
        }

    def _read(self, event: dict[str, Any]) -> Chunk:
        tokens = event.get("tokens")
        if not isinstance(tokens, list):
            raise self._text_instead_of_ids(
                "tokens", "this llama-server is too old: it needs `return_tokens` support"
            )
        return Chunk([int(t) for t in tokens])

    def generate(
        self,
        prompt: Sequence[int],
        *,
        stop_tokens: Collection[int],
        max_tokens: int,
        sampling: Sampling = Sampling(),  # noqa: B008 - frozen dataclass
    ) -> Iterator[int]:
        """Stream llama-server's token ids for `prompt` (see the module doc for the repair of
        ids it withholds); closing the iterator closes the stream, which cancels the request."""
        stops = sorted(set(stop_tokens))
        out: list[int] = []
        prompt = list(prompt)
        while len(out) < max_tokens:
            body = self._request(prompt + out, stops, max_tokens - len(out), sampling)
            events = self.endpoint.events(self.generate_path, body)
            start, gap = len(out), 0
            try:
                for event in events:
                    tokens = self._read(event).tokens
                    # this request's count, this event's token included: more means ids went
                    # missing before it
                    predicted = int(event.get("tokens_predicted", 0))
                    gap = predicted - (len(out) - start) - len(tokens)
                    if gap > 0:
                        final = bool(event.get("stop"))
                        break
                    for token in tokens:
                        out.append(token)
                        yield token
                        if token in stops or len(out) >= max_tokens:
                            return
                    if event.get("stop"):
                        return
                else:
                    return
            finally:
                events.close()
            # the withheld stretch, unstreamed: a request answered whole carries every id
            body = self._request(prompt + out, stops, gap, sampling, stream=False)
            (answer,) = self.endpoint.events(self.generate_path, body)
            filled = self._read(answer).tokens
            for token in filled:
                out.append(token)
                yield token
                if token in stops or len(out) >= max_tokens:
                    return
            if final or len(filled) < gap:  # the engine had ended its generation there
                return
