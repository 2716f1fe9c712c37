"""Transcripts: a conversation as append-only JSON lines, written while the run proceeds.

Each line is one record (`harmony_agent.records`): `{"type": "message", "message": {...}}`
(harmony's dict form of a message, system and developer messages included) or
`{"type": "run", ...}` (how a run ended).
A line is written as soon as its message is complete, so a crash loses at most the message in
flight; a torn last line is ignored on load.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from openai_harmony import Message

from harmony_agent.records import RecordError, read_messages

from .result import RunResult


class TranscriptError(ValueError):
    """A transcript file that cannot be read."""


class TranscriptWriter:
    """Appends records to a transcript file, flushing each one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.is_new = not self.path.exists() or self.path.stat().st_size == 0
        if not self.is_new:
            drop_torn_line(self.path)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def message(self, message: Message) -> None:
        self._write({"type": "message", "message": message.to_dict()})

    def run_ended(self, result: RunResult) -> None:
        self._write(
            {
                "type": "run",
                "status": result.status,
                "detail": result.detail,
                "usage": asdict(result.usage),
            }
        )

    def close(self) -> None:
        self._file.close()


def drop_torn_line(path: Path) -> None:
    """Cut a last line left without its newline: a crash mid-write, a record never finished."""
    with path.open("rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def load_transcript(path: str | os.PathLike[str]) -> list[Message]:
    """The messages of a transcript, in order (system and developer messages included).

    Pass them as `history=` to continue the conversation. A torn last line (a crash while it was
    written) is skipped; any other unreadable line is an error naming its number.
    """
    path = Path(path)
    try:
        return [message for _, message in read_messages(path)]
    except FileNotFoundError:
        raise TranscriptError(f"transcript not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TranscriptError(f"cannot read transcript {path}: {e}") from None
    except RecordError as e:
        raise TranscriptError(str(e)) from None
