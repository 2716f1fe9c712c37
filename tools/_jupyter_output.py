"""Turn a Jupyter execution's iopub messages into the text a model reads.

Kept apart from the kernel plumbing so the rendering rules (what is shown, what is trimmed) can
be read and tested on their own.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
_IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif"}
# A traceback longer than this many frames keeps its first and last ones only: the model needs
# its own cell and the frame that raised, not the library internals in between.
_MAX_FRAMES = 6
_KEEP_FIRST, _KEEP_LAST = 2, 3
_IPYTHON_FRAME = re.compile(r"File \S*/site-packages/IPython/")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _apply_carriage_returns(text: str) -> str:
    """Progress bars redraw a line with '\\r': keep what the terminal would finally show."""
    if "\r" not in text:
        return text
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line else line for line in lines)


def truncate(text: str, limit: int) -> str:
    """Keep the head and the tail of `text` within about `limit` characters, saying how much was
    cut in between."""
    if len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    cut = len(text) - 2 * half
    return f"{text[:half]}\n[... {cut} characters cut ...]\n{text[-half:]}"


def format_traceback(frames: list[str], ename: str, evalue: str) -> str:
    """IPython's traceback without colours, its dashed rule, or the middle of a deep stack."""
    lines = [strip_ansi(f).rstrip("\n") for f in frames]
    lines = [line for line in lines if line.strip() and not set(line.strip()) <= {"-"}]
    if not lines:
        return f"{ename}: {evalue}"
    # IPython's layout: a header ("NameError  Traceback (most recent call last)"), one entry per
    # frame, and the final "NameError: msg" line.
    head, body, tail = lines[:1], lines[1:-1], lines[-1:]
    # IPython's own frames (its wrapped open(), the display machinery) explain nothing to the model.
    body = [frame for frame in body if not _IPYTHON_FRAME.match(frame)]
    if len(body) > _MAX_FRAMES:
        omitted = len(body) - _KEEP_FIRST - _KEEP_LAST
        body = [*body[:_KEEP_FIRST], f"[... {omitted} frames omitted ...]", *body[-_KEEP_LAST:]]
    return "\n".join([*head, *body, *tail])


class OutputCollector:
    """Accumulates one execution's output in arrival order.

    `save_image(data, extension)` stores an image and returns the path the model should read
    (under /mnt/data); it is called once per image.
    """

    def __init__(self, save_image: Callable[[bytes, str], str]) -> None:
        self._save_image = save_image
        self._parts: list[str] = []
        self.error: tuple[str, str] | None = None
        """(ename, evalue) of the error the execution raised, if any."""

    def add(self, msg: dict[str, Any]) -> None:
        kind = msg["header"]["msg_type"]
        content = msg["content"]
        if kind == "stream":
            self._parts.append(content.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            self._add_data(content.get("data", {}))
        elif kind == "error":
            ename, evalue = content.get("ename", "Error"), content.get("evalue", "")
            self.error = (ename, evalue)
            self._newline()
            self._parts.append(format_traceback(content.get("traceback", []), ename, evalue) + "\n")
        elif kind == "clear_output":
            self._parts.clear()

    def _newline(self) -> None:
        if self._parts and not self._parts[-1].endswith("\n"):
            self._parts.append("\n")

    def _add_data(self, data: dict[str, Any]) -> None:
        self._newline()
        for mime, ext in _IMAGE_TYPES.items():
            if mime in data:
                path = self._save_image(base64.b64decode(data[mime]), ext)
                self._parts.append(f"[image saved to {path}]\n")
                return
        text = data.get("text/plain")
        if text is not None:
            self._parts.append(strip_ansi(text) + "\n")

    def drop_keyboard_interrupt(self) -> None:
        """Remove the KeyboardInterrupt traceback an interrupt leaves: our own timeout message
        says what happened."""
        if self.error and self.error[0] == "KeyboardInterrupt":
            for i in range(len(self._parts) - 1, -1, -1):
                if "KeyboardInterrupt" in self._parts[i]:
                    del self._parts[i]
                    break
            self.error = None

    def text(self) -> str:
        return _apply_carriage_returns(strip_ansi("".join(self._parts))).rstrip("\n")
