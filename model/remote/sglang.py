"""SGLang's native server: `POST /generate` with `input_ids`, streamed `output_ids`.

Fields from SGLang's documented `/generate` (docs/basic_usage/sampling_params.md and the
sampling_params.py it points to; NOT run against a real SGLang here): `input_ids`,
`stream: true`, and `sampling_params` with `max_new_tokens`, `temperature`, `top_p`, `top_k`
(-1: off), `min_p`, `stop_token_ids`, `sampling_seed`, `no_stop_trim` and
`skip_special_tokens: false`. Each event carries `output_ids` and `meta_info` with
`completion_tokens` and, at the end, `finish_reason` (`{"type": "stop", "matched": <id>}`).
Depending on the server's `--incremental-streaming-output` (older: `--stream-output`),
`output_ids` is either all ids so far or only the new ones; `completion_tokens` tells which.
`POST /tokenize` checks the vocabulary and gives `max_model_len`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..protocol import Sampling
from ._http import PROBE, Chunk, RemoteEngineError, RemoteModel


class SGLangModel(RemoteModel):
    """gpt-oss served by SGLang (`load_model(url, engine="sglang")`)."""

    engine = "sglang"
    display = "SGLang"
    generate_path = "/generate"

    def _connect(self) -> int | None:
        info = self.endpoint.request("GET", "/get_model_info")
        if not isinstance(info, dict):
            raise RemoteEngineError(f"{self.url} is not an SGLang server (no /get_model_info)")
        if info.get("is_generation") is False:
            raise RemoteEngineError(f"SGLang at {self.url} serves an embedding model")
        tokens = self.endpoint.request("POST", "/tokenize",
                                       {"prompt": PROBE, "add_special_tokens": False})  # fmt: skip
        if tokens is None:
            return None
        self._check_vocabulary(tokens.get("tokens"))
        limit = tokens.get("max_model_len")
        return limit if isinstance(limit, int) and limit > 0 else None

    def _request(
        self, prompt: list[int], stop_tokens: list[int], max_tokens: int, sampling: Sampling
    ) -> dict[str, Any]:
        params: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": -1,
            "min_p": 0.0,
            "stop_token_ids": stop_tokens,
            "no_stop_trim": True,
            "skip_special_tokens": False,
        }
        if sampling.seed is not None:
            params["sampling_seed"] = sampling.seed
        return {"input_ids": prompt, "sampling_params": params, "stream": True}

    def _reader(self) -> Callable[[dict[str, Any]], Chunk]:
        seen = 0

        def read(event: dict[str, Any]) -> Chunk:
            nonlocal seen
            ids = event.get("output_ids")
            if not isinstance(ids, list):
                raise self._text_instead_of_ids(
                    "output_ids", "it needs an SGLang whose /generate streams output_ids"
                )
            meta = event.get("meta_info") or {}
            if meta.get("completion_tokens") == len(ids) and len(ids) >= seen:
                new = ids[seen:]  # all ids so far: the new ones are the end
            else:
                new = ids  # incremental streaming: only this event's ids
            seen += len(new)
            finish = meta.get("finish_reason")
            matched = finish.get("matched") if isinstance(finish, dict) else None
            return Chunk([int(t) for t in new], matched if isinstance(matched, int) else None)

        return read
