"""What the remote engines share: JSON over HTTP, a streamed answer read as server-sent events,
errors translated once into one line, and the `generate()` loop of the Model protocol.

The standard library's `http.client` is enough: one POST whose body streams back line by line,
a timeout on every read, and `close()` on the socket, which is how an engine learns that its
client went away and cancels the request (tested with llama-server; vLLM's and SGLang's servers
abort a streamed request whose client disconnects too, untested here). `generate()` is a
synchronous iterator, so an async client (httpx) would buy nothing and cost a dependency.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from harmony_agent.encoding import harmony_encoding

from ..protocol import Sampling

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a TCP connection: an unreachable host fails fast."""
PROBE = "<|start|>assistant<|channel|>final<|message|>Hi! 2+2=4, über 世界 🙂<|return|>"
"""Tokenized by the engine at connect and compared with harmony's encoding: special tokens,
ASCII, accents, CJK and an emoji catch a different vocabulary or a missing special token."""


class RemoteEngineError(RuntimeError):
    """A remote engine is unreachable, too slow, or answered something unusable (one line)."""


def _one_line(text: str, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Endpoint:
    """An engine's base URL: where requests go and how failures read."""

    url: str
    engine: str
    """The engine's name in messages ("llama.cpp", "vLLM", "SGLang")."""
    timeout: float
    """Seconds to wait for any answer byte (the first token of a long prompt included)."""

    @classmethod
    def parse(cls, url: str, engine: str, timeout: float) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL of an engine")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        return cls(url.rstrip("/"), engine, timeout)

    def _connection(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        https = parts.scheme == "https"
        kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
        conn = kind(parts.hostname or "", parts.port, timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()
        except ConnectionRefusedError:
            raise RemoteEngineError(
                f"cannot reach {self.engine} at {self.url}: connection refused (is it running?)"
            ) from None
        except TimeoutError:
            raise RemoteEngineError(
                f"cannot reach {self.engine} at {self.url}: no connection within "
                f"{CONNECT_TIMEOUT:g} s"
            ) from None
        except OSError as e:
            raise RemoteEngineError(
                f"cannot reach {self.engine} at {self.url}: {e.strerror or e}"
            ) from None
        assert conn.sock is not None
        conn.sock.settimeout(self.timeout)
        return conn

    def _path(self, path: str) -> str:
        return (urlsplit(self.url).path + path) or "/"

    def _failed(self, path: str, e: BaseException) -> RemoteEngineError:
        where = f"{self.engine} at {self.url}{path}"
        if isinstance(e, TimeoutError):
            return RemoteEngineError(f"{where}: no answer within {self.timeout:g} s (timeout)")
        if isinstance(e, http.client.HTTPException):
            return RemoteEngineError(f"{where}: not an HTTP answer ({e})")
        if isinstance(e, json.JSONDecodeError):
            return RemoteEngineError(f"{where}: the answer is not JSON ({_one_line(e.doc, 80)!r})")
        if isinstance(e, ValueError):
            return RemoteEngineError(f"{where}: {_one_line(str(e))}")
        reason = _one_line(str(e)) or type(e).__name__
        return RemoteEngineError(f"{where}: the connection broke ({reason})")

    def _status_error(self, path: str, status: int, body: bytes) -> RemoteEngineError:
        text = body.decode("utf-8", "replace")
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        message = error_message(data) if data is not None else None
        return RemoteEngineError(
            f"{self.engine} at {self.url}{path} answered HTTP {status}: "
            f"{_one_line(message or text or http.client.responses.get(status, ''))}"
        )

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One request and its JSON answer (None when the engine has no such route: HTTP 404)."""
        conn = self._connection()
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, self._path(path), body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            if response.status == 404:
                return None
            if response.status != 200:
                raise self._status_error(path, response.status, raw)
            return json.loads(raw)
        except RemoteEngineError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise self._failed(path, e) from None
        finally:
            conn.close()

    def events(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """POST `body` and yield the JSON objects of the server-sent events that answer it.

        Closing this iterator closes the connection, which makes the engine drop the request.
        """
        conn = self._connection()
        try:
            conn.request("POST", self._path(path), body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json",
                                  "Accept": "text/event-stream"})  # fmt: skip
            response = conn.getresponse()
            if response.status != 200:
                raise self._status_error(path, response.status, response.read())
            if not response.getheader("Content-Type", "").startswith("text/event-stream"):
                # An engine that ignores `stream` answers once, as plain JSON.
                event = json.loads(response.read())
                if not isinstance(event, dict):
                    raise self._failed(path, ValueError(f"unexpected answer {event!r}"))
                yield _checked(self, path, event)
                return
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line.startswith("data:"):
                    continue  # blank separators, `:` pings, `event:` names
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                event = json.loads(payload)
                if not isinstance(event, dict):
                    raise self._failed(path, ValueError(f"unexpected event {payload[:80]!r}"))
                yield _checked(self, path, event)
        except RemoteEngineError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise self._failed(path, e) from None
        finally:
            conn.close()


def error_message(data: Any) -> str | None:
    """The message of an engine's JSON error: `{"error": {"message": ...}}`, `{"error": "..."}`,
    `{"message": ...}` or FastAPI's `{"detail": ...}`."""
    if not isinstance(data, dict):
        return None
    error = data.get("error", data)
    if isinstance(error, str):
        return error
    if isinstance(error, dict):
        for key in ("message", "detail"):
            if isinstance(value := error.get(key), str | list):
                return value if isinstance(value, str) else json.dumps(value)
    return None


def _checked(endpoint: Endpoint, path: str, event: dict[str, Any]) -> dict[str, Any]:
    if "error" in event:
        message = error_message(event) or json.dumps(event["error"])
        raise RemoteEngineError(f"{endpoint.engine} at {endpoint.url}{path}: {_one_line(message)}")
    return event


@dataclass
class Chunk:
    """What one event of a stream says: new token ids, and the stop token when the engine names
    the one that ended generation (it may leave it out of the ids)."""

    tokens: list[int]
    stopped_by: int | None = None


class RemoteModel:
    """A model served by an engine over HTTP: the Model protocol, token ids in and out.

    A subclass names its engine and says how a generation request is written and how one event
    of its stream reads; connecting checks that the engine speaks harmony's vocabulary and
    learns its context length (`max_context`, which the agent's runs respect).
    """

    engine: ClassVar[str]
    """The name `load_model(..., engine=...)` and `--engine` take."""
    display: ClassVar[str]
    """The engine's name in messages."""
    generate_path: ClassVar[str]

    def __init__(self, url: str, *, timeout: float = 300.0, max_context: int | None = None) -> None:
        self.endpoint = Endpoint.parse(url, self.display, timeout)
        self.url = self.endpoint.url
        engine_context = self._connect()
        limits = [n for n in (engine_context, max_context) if n]
        self.max_context: int | None = min(limits) if limits else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # --- what an engine defines ----------------------------------------------------------------

    def _connect(self) -> int | None:
        """Check the engine and its vocabulary; its context length in tokens when it says."""
        raise NotImplementedError

    def _request(
        self, prompt: list[int], stop_tokens: list[int], max_tokens: int, sampling: Sampling
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _read(self, event: dict[str, Any]) -> Chunk:
        raise NotImplementedError

    def _reader(self) -> Callable[[dict[str, Any]], Chunk]:
        """How one stream's events read (a fresh one per request, for engines whose events
        depend on the ones before)."""
        return self._read

    # --- shared ----------------------------------------------------------------------------------

    def _check_vocabulary(self, tokens: Any) -> None:
        """Compare the engine's tokens for PROBE with harmony's."""
        want = harmony_encoding().encode(PROBE, allowed_special="all")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise RemoteEngineError(
                f"{self.display} at {self.url}: /tokenize answered {_one_line(repr(tokens), 80)}, "
                "not token ids"
            )
        if tokens != want:
            at = next((i for i, (a, b) in enumerate(zip(tokens, want, strict=False)) if a != b),
                      min(len(tokens), len(want)))  # fmt: skip
            raise RemoteEngineError(
                f"{self.display} at {self.url} does not use harmony's vocabulary (o200k with "
                f"harmony's special tokens): it tokenizes {PROBE!r} as {tokens[at : at + 4]}... "
                f"from token {at}, harmony as {want[at : at + 4]}...; serve a gpt-oss model"
            )

    def _text_instead_of_ids(self, field: str, hint: str) -> RemoteEngineError:
        return RemoteEngineError(
            f"{self.display} at {self.url} answered text without token ids (no {field!r} in its "
            f"stream); {hint}"
        )

    def generate(
        self,
        prompt: Sequence[int],
        *,
        stop_tokens: Collection[int],
        max_tokens: int,
        sampling: Sampling = Sampling(),  # noqa: B008 - frozen dataclass
    ) -> Iterator[int]:
        """Stream the engine's token ids for `prompt`, the stop token that ends them included.

        Stopping early (the consumer closes the iterator, Ctrl-C) closes the HTTP stream, and the
        engine cancels the request.
        """
        if max_tokens <= 0:
            return
        stops = set(stop_tokens)
        body = self._request(list(prompt), sorted(stops), max_tokens, sampling)
        events = self.endpoint.events(self.generate_path, body)
        read = self._reader()
        produced = 0
        last: int | None = None
        try:
            for event in events:
                chunk = read(event)
                tokens = chunk.tokens
                if chunk.stopped_by is not None and chunk.stopped_by != (tokens[-1:] or [last])[0]:
                    tokens = [*tokens, chunk.stopped_by]
                for token in tokens:
                    yield token
                    produced += 1
                    last = token
                    if token in stops or produced >= max_tokens:
                        return
        finally:
            events.close()
