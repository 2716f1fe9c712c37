"""Many independent tasks, one result line each, resumable after an interruption."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .agent import Agent
from .result import RunResult
from .transcript import drop_torn_line


class BatchError(ValueError):
    """A tasks file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Task:
    id: str
    prompt: str


def read_tasks(path: str | os.PathLike[str]) -> list[Task]:
    """Tasks from JSONL: each line `{"id": ..., "task": "..."}` or a JSON string (its id is the
    line number). Ids must be unique: they are how a resumed batch knows what is done."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise BatchError(f"cannot read tasks {path}: {e.strerror}") from None
    tasks: list[Task] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise BatchError(f"{path}:{number}: not JSON ({e.msg})") from None
        if isinstance(item, str):
            item = {"task": item}
        if not isinstance(item, dict) or not isinstance(item.get("task"), str):
            raise BatchError(f'{path}:{number}: expected {{"id": ..., "task": "..."}} or a string')
        tasks.append(Task(str(item.get("id", number)), item["task"]))
    ids = [t.id for t in tasks]
    if dupes := sorted({i for i in ids if ids.count(i) > 1}):
        raise BatchError(f"{path}: duplicate task ids: {', '.join(dupes)}")
    return tasks


def done_ids(output: Path) -> set[str]:
    """Ids already answered in `output` (a torn last line, from an interruption, is not)."""
    if not output.exists():
        return set()
    done = set()
    for line in output.read_text(encoding="utf-8").splitlines():
        try:
            done.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def run_batch(
    agent: Agent,
    tasks: list[Task],
    output: str | os.PathLike[str],
) -> Iterator[tuple[Task, RunResult]]:
    """Run the tasks not yet in `output`, appending one JSON line per task as each finishes."""
    output = Path(output)
    done = done_ids(output)
    if output.exists():
        drop_torn_line(output)  # an interrupted write
    with output.open("a", encoding="utf-8") as out:
        for task in tasks:
            if task.id in done:
                continue
            result = agent.run(task.prompt)
            record = {"id": task.id, "task": task.prompt, **result.to_dict()}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            yield task, result
