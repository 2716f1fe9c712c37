"""Harmony messages handed to a stateless client and taken back intact.

A Responses client that keeps the conversation itself (`store: false`, as Codex does) sends back
the `reasoning` items it got, with their `encrypted_content` when it asked for it. That field
carries the exact harmony messages the item stands for (the analysis, or a built-in tool call
and its result), so the next prompt holds them again as the model wrote them. The payload is
readable base64 JSON, not a secret; an HMAC keyed per server run makes sure it is one this
server wrote, so a client's edit or an old server's token is never read back as the model's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from openai_harmony import Message, Role

_PREFIX = "ha1"
_TAG_BYTES = 16
_ROLES = (Role.ASSISTANT, Role.TOOL)


@dataclass(frozen=True)
class Sealed:
    """What a sealed payload held."""

    messages: list[Message]
    covers: str | None = None
    """The id of the output item (a `web_search_call`, say) whose messages these are."""


class Sealer:
    """Seals and opens payloads with one key (random unless given)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or os.urandom(32)

    def seal(self, messages: Sequence[Message], covers: str | None = None) -> str:
        payload: dict[str, object] = {"m": [m.to_dict() for m in messages]}
        if covers is not None:
            payload["c"] = covers
        body = _b64(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
        return f"{_PREFIX}.{body}.{self._tag(body)}"

    def open(self, token: str) -> Sealed | None:
        """The payload, or None when the token is not one this server sealed."""
        prefix, _, rest = token.partition(".")
        body, _, tag = rest.partition(".")
        if prefix != _PREFIX or not hmac.compare_digest(tag, self._tag(body)):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            messages = [Message.from_dict(m) for m in payload["m"]]
        except (ValueError, KeyError, TypeError):  # sealed by us, so only a bug gets here
            return None
        if any(m.author.role not in _ROLES for m in messages):
            return None
        covers = payload.get("c")
        return Sealed(messages, covers if isinstance(covers, str) else None)

    def _tag(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return _b64(digest[:_TAG_BYTES])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
