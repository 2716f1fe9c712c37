"""vLLM's OpenAI-compatible server: `POST /v1/completions` with the prompt as token ids.

Fields from vLLM's documented `CompletionRequest` (vllm/entrypoints/openai/completion/protocol.py,
read for this adapter; NOT run against a real vLLM here): `prompt` takes a list of ids;
`return_token_ids: true` makes every streamed choice carry `token_ids` (the delta of that chunk;
`prompt_token_ids` only in the first); `stop_token_ids`, `max_tokens`, `temperature`, `top_p`,
`seed`; `top_k` 0, `min_p` 0 and `repetition_penalty` 1 override defaults the server may take
from the model's generation config. A choice's `stop_reason` names the stop token id that ended
it. The served model's name and `max_model_len` come from `GET /v1/models`; `POST /tokenize`
checks the vocabulary.
"""

from __future__ import annotations

from typing import Any

from ..protocol import Sampling
from ._http import PROBE, Chunk, RemoteEngineError, RemoteModel


class VllmModel(RemoteModel):
    """gpt-oss served by vLLM (`load_model(url, engine="vllm")`)."""

    engine = "vllm"
    display = "vLLM"
    generate_path = "/v1/completions"

    def __init__(self, url: str, *, timeout: float = 300.0, max_context: int | None = None) -> None:
        # The OpenAI clients' base URL ends in /v1; the routes below carry it themselves.
        url = url.rstrip("/")
        super().__init__(url.removesuffix("/v1"), timeout=timeout, max_context=max_context)

    def _connect(self) -> int | None:
        models = self.endpoint.request("GET", "/v1/models")
        data = models.get("data") if isinstance(models, dict) else None
        if not data or not isinstance(data[0], dict) or "id" not in data[0]:
            raise RemoteEngineError(f"{self.url} serves no model at /v1/models (is it vLLM?)")
        self.model_name: str = data[0]["id"]
        probe = {"model": self.model_name, "prompt": PROBE, "add_special_tokens": False}
        tokens = self.endpoint.request("POST", "/tokenize", probe)
        if tokens is not None:
            self._check_vocabulary(tokens.get("tokens"))
        limit = data[0].get("max_model_len")
        return limit if isinstance(limit, int) and limit > 0 else None

    def _request(
        self, prompt: list[int], stop_tokens: list[int], max_tokens: int, sampling: Sampling
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "stop_token_ids": stop_tokens,
            "stream": True,
            "return_token_ids": True,
            "skip_special_tokens": False,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        return body

    def _read(self, event: dict[str, Any]) -> Chunk:
        choices = event.get("choices")
        if not choices:  # e.g. a closing usage-only chunk
            return Chunk([])
        choice = choices[0]
        tokens = choice.get("token_ids")
        if not isinstance(tokens, list):
            if choice.get("finish_reason") is not None and not choice.get("text"):
                return Chunk([])
            raise self._text_instead_of_ids(
                "token_ids", "it needs a vLLM whose /v1/completions supports return_token_ids"
            )
        stop = choice.get("stop_reason")
        return Chunk([int(t) for t in tokens], stop if isinstance(stop, int) else None)
