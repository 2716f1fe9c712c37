"""Turn a Jupyter execution's iopub messages into the text a model reads.

Kept apart from the kernel plumbing so the rendering rules (what is shown, what is trimmed) can
be read and tested on their own.
"""

from __future__ import annotations

import base64
import binascii
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
    if len(lines) == 1:
        # A SyntaxError's whole report (cell, line, caret, error) is one entry: it is both the
        # header and the final line, and must be shown once.
        return lines[0]
    # IPython's layout: a header ("NameError  Traceback (most recent call last)"), one entry per
    # frame, and the final "NameError: msg" line.
    head, body, tail = lines[:1], lines[1:-1], lines[-1:]
    # IPython's own frames (its wrapped open(), the display machinery) explain nothing to the model.
    body = [frame for frame in body if not _IPYTHON_FRAME.match(frame)]
    if len(body) > _MAX_FRAMES:
        omitted = len(body) - _KEEP_FIRST - _KEEP_LAST
        body = [*body[:_KEEP_FIRST], f"[... {omitted} frames omitted ...]", *body[-_KEEP_LAST:]]
    return "\n".join([*head, *body, *tail])


def _count(value: Any) -> int:
    """A count the kernel reports; the kernel is the model's, so anything else counts as 0."""
    return value if isinstance(value, int) and value > 0 else 0


class _Window:
    """Text appended piece by piece, of which only the first and the last `keep` characters are
    kept: a call that prints gigabytes must cost the host kilobytes. `cut` counts the rest."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.head: list[str] = []
        self.head_len = 0
        self.tail: list[str] = []
        self.tail_len = 0
        self.cut = 0
        self.last_char = ""

    def append(self, text: str, cut: int = 0) -> None:
        """Add `text`; `cut` counts characters its sender already left out of it."""
        self.cut += cut
        if not text:
            return
        self.last_char = text[-1]
        if self.head_len < self.keep:
            taken = text[: self.keep - self.head_len]
            self.head.append(taken)
            self.head_len += len(taken)
            text = text[len(taken) :]
        if text:
            self.tail.append(text)
            self.tail_len += len(text)
            if self.tail_len > 2 * self.keep:
                # Amortised: the tail is rejoined once per `keep` characters at most.
                joined = "".join(self.tail)
                self.cut += len(joined) - self.keep
                self.tail, self.tail_len = [joined[-self.keep :]], self.keep

    def render(self, clean: Callable[[str], str]) -> str:
        """The text kept, passed through `clean`, without trailing newlines, within `keep`."""
        if not self.cut:
            return truncate(clean("".join(self.head + self.tail)).rstrip("\n"), self.keep)
        head, tail = clean("".join(self.head)), clean("".join(self.tail)).rstrip("\n")
        half = max(self.keep // 2, 1)
        cut = self.cut + max(len(head) - half, 0) + max(len(tail) - half, 0)
        return f"{head[:half]}\n[... {cut} characters cut ...]\n{tail[-half:]}"


class OutputCollector:
    """Accumulates one execution's output in arrival order, within `max_chars`: longer output
    keeps its head and tail, with a marker saying how much was cut (memory stays bounded while
    it streams, however much the code prints).

    `save_image(data, extension)` stores an image and returns the path the model should read
    (under /mnt/data), or raises OSError; it is called once per image, for at most `max_images`
    images.
    """

    def __init__(
        self,
        save_image: Callable[[bytes, str], str],
        *,
        max_chars: int = 16_000,
        max_images: int = 50,
    ) -> None:
        self._save_image = save_image
        self._max_chars = max_chars
        self._images_left = max_images
        self._window = _Window(max_chars)
        self._pending_error = ""
        """The last traceback, held back so that an interrupt's can still be dropped."""
        self.error: tuple[str, str] | None = None
        """(ename, evalue) of the error the execution raised, if any."""

    def add(self, msg: dict[str, Any]) -> None:
        kind = msg["header"]["msg_type"]
        content = msg["content"]
        if kind == "stream":
            self._flush_error()
            self._window.append(str(content.get("text", "")), cut=_count(content.get("cut")))
        elif kind in ("execute_result", "display_data"):
            self._add_data(content.get("data", {}))
        elif kind == "error":
            ename, evalue = content.get("ename", "Error"), content.get("evalue", "")
            self._newline()
            self._flush_error()
            self.error = (ename, evalue)
            self._pending_error = (
                format_traceback(content.get("traceback", []), ename, evalue) + "\n"
            )
        elif kind == "clear_output":
            self._window = _Window(self._max_chars)
            self._pending_error = ""

    def _flush_error(self) -> None:
        if self._pending_error:
            self._window.append(self._pending_error)
            self._pending_error = ""

    def _append(self, text: str) -> None:
        self._flush_error()
        self._window.append(text)

    def _newline(self) -> None:
        if self._pending_error:
            return  # a traceback ends with one
        if self._window.last_char not in ("", "\n"):
            self._window.append("\n")

    def _add_data(self, data: dict[str, Any]) -> None:
        self._newline()
        for mime, ext in _IMAGE_TYPES.items():
            if mime in data:
                if self._images_left <= 0:
                    self._append("[image not saved: too many images in one call]\n")
                    return
                self._images_left -= 1
                try:
                    image = base64.b64decode(str(data[mime]), validate=False)
                except binascii.Error:
                    self._append("[image not saved: its data is not valid base64]\n")
                    return
                try:
                    path = self._save_image(image, ext)
                except OSError as e:
                    # strerror only: the exception's file name would be a host path.
                    self._append(f"[image not saved: {e.strerror or 'error'}]\n")
                    return
                self._append(f"[image saved to {path}]\n")
                return
        text = data.get("text/plain")
        if text is not None:
            self._append(strip_ansi(text) + "\n")

    def drop_keyboard_interrupt(self) -> None:
        """Remove the KeyboardInterrupt traceback an interrupt leaves: our own timeout message
        says what happened."""
        if self.error and self.error[0] == "KeyboardInterrupt":
            self._pending_error = ""
            self.error = None

    def text(self) -> str:
        self._flush_error()
        return self._window.render(lambda t: _apply_carriage_returns(strip_ansi(t)))
