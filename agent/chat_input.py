"""Reading the user's messages at the terminal: Enter sends, Alt-Enter (or Esc, then Enter)
starts a new line, a paste stays one message, and the history lasts across sessions."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.enums import DEFAULT_BUFFER
from prompt_toolkit.filters import has_focus
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

from harmony_agent.encoding import cache_dir

KEYS_HELP = "Enter sends; Alt-Enter or Esc Enter starts a new line; a paste stays one message"


def message_reader() -> Callable[[str], str]:
    """What `Chat` reads messages with: `reader(prompt)` returns one message.

    At a terminal it is a prompt_toolkit prompt with line editing, multi-line messages,
    bracketed paste and a history kept in the cache folder (`chat_history`). Anywhere else (a
    pipe, a file) it is `input`: each line is a message.
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return input
    session: PromptSession[str] = PromptSession(
        history=_History(cache_dir() / "chat_history"),
        # Multi-line, so that the newlines of a paste stay in the buffer; Enter is rebound below
        # to send.
        multiline=True,
        key_bindings=_keys(),
    )
    return session.prompt


def _keys() -> KeyBindings:
    keys = KeyBindings()
    # Only in the message itself: Enter in a history search (Ctrl-R) still ends the search.
    typing = has_focus(DEFAULT_BUFFER)

    @keys.add("enter", filter=typing)
    def _send(event: KeyPressEvent) -> None:
        event.current_buffer.validate_and_handle()

    @keys.add("escape", "enter", filter=typing)  # terminals send Alt-Enter as Esc, Enter
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return keys


class _History(FileHistory):
    """A history file that a missing, unreadable or read-only cache folder cannot end the chat
    with: the history then lasts only for the session."""

    def __init__(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path)

    def load_history_strings(self) -> Iterable[str]:
        try:
            return list(super().load_history_strings())
        except OSError:
            return []

    def store_string(self, string: str) -> None:
        with contextlib.suppress(OSError):
            super().store_string(string)
