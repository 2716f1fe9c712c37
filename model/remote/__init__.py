"""Remote engines behind the Model protocol: gpt-oss served by llama.cpp, vLLM or SGLang, driven
over HTTP with token ids in and token ids out, so harmony stays ours (rendering, parsing, tools)
and the engine does only what it is good at.

`connect(url, engine)` (or `load_model(url, engine=...)`) checks the engine and its vocabulary
and returns a model whose `generate()` streams the engine's tokens.
"""

from __future__ import annotations

from ._http import RemoteEngineError, RemoteModel
from .llamacpp import LlamaCppModel
from .sglang import SGLangModel
from .vllm import VllmModel

ENGINES: dict[str, type[RemoteModel]] = {
    cls.engine: cls for cls in (LlamaCppModel, VllmModel, SGLangModel)
}
"""Engine names (`--engine`) and their models."""


def is_url(path: object) -> bool:
    """Whether `path` names a served model (http:// or https://) rather than a file."""
    return isinstance(path, str) and path.startswith(("http://", "https://"))


def connect(
    url: str, engine: str | None, *, timeout: float = 300.0, max_context: int | None = None
) -> RemoteModel:
    """The model an engine serves at `url`. timeout: seconds to wait for any byte of an answer
    (a long prompt's first token included). max_context: a tighter limit than the engine's."""
    if engine is None:
        raise ValueError(f"{url} is a served model: say which engine serves it "
                         f"(engine= / --engine: {', '.join(ENGINES)})")  # fmt: skip
    cls = ENGINES.get(engine)
    if cls is None:
        raise ValueError(f"unknown engine {engine!r} ({', '.join(ENGINES)})")
    return cls(url, timeout=timeout, max_context=max_context)


__all__ = [
    "ENGINES",
    "LlamaCppModel",
    "RemoteEngineError",
    "RemoteModel",
    "SGLangModel",
    "VllmModel",
    "connect",
    "is_url",
]
