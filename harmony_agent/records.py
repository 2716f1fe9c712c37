"""Message records: harmony messages as JSON lines, the format of transcripts and training data.

Each line is one record: `{"type": "message", "message": {...}}` (harmony's dict form of a
message, system and developer messages included) or another type (`run`: how a run ended), which
readers of messages skip. The agent writes a record as soon as its message is complete
(`harmony_agent.agent.transcript`); fine-tuning reads the same files (`harmony_agent.model.train`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from openai_harmony import Message


class RecordError(ValueError):
    """A line that is not a record; the message names the file and the line."""


def read_messages(path: str | os.PathLike[str]) -> list[tuple[int, Message]]:
    """The messages of a record file, each with its line number.

    A torn last line (no newline: its writer died mid-line) is skipped; any other line that is
    not a record raises `RecordError`. Errors opening or decoding the file propagate (OSError,
    UnicodeDecodeError) for the caller to word.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    # Only "\n" ends a record: text may hold U+2028 and the like, which splitlines() splits on.
    lines = text.removesuffix("\n").split("\n") if text else []
    torn = len(lines) if text and not text.endswith("\n") else None
    messages = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if record.get("type") == "message":
                messages.append((number, Message.from_dict(record["message"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            if number == torn:
                break
            raise RecordError(f"{path}:{number}: not a transcript record ({e})") from None
    return messages
