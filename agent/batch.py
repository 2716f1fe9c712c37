"""Many independent tasks, one result line per attempt, resumable after an interruption.

The results file is a history: every attempt appends a line, and a task's last line is its result.
A rerun runs the tasks without a line and retries those whose last line did not complete.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .agent import Agent
from .result import RunResult
from .transcript import drop_torn_line

ERROR = "error"
"""The status a result line records when the run raised instead of ending (the model failed)."""
NOT_RUN = "not_run"
"""A task's status while the results file has no line for it."""


class BatchError(ValueError):
    """A tasks file that cannot be read; the message names the file and line."""


class TaskFailed(Exception):
    """A task's run raised (the model failed, not the task): `error` is what it raised."""

    def __init__(self, task: Task, error: Exception) -> None:
        super().__init__(f"task {task.id}: {error}")
        self.task, self.error = task, error


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


def final_statuses(tasks: list[Task], output: str | os.PathLike[str]) -> dict[str, str]:
    """Each task's status as the batch stands, in the tasks' order: that of its last line in
    `output`, or `not_run` (a torn last line, from an interruption, does not count)."""
    output = Path(output)
    last: dict[str, str] = {}
    lines = output.read_text(encoding="utf-8").splitlines() if output.exists() else []
    for line in lines:
        try:
            record = json.loads(line)
            last[str(record["id"])] = str(record["status"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return {t.id: last.get(t.id, NOT_RUN) for t in tasks}


def to_run(tasks: list[Task], statuses: dict[str, str], *, retry: bool = True) -> list[Task]:
    """The tasks not run yet and, with `retry`, those whose last result did not complete
    (`statuses` from `final_statuses`)."""
    return [
        t for t in tasks if statuses[t.id] != "completed" and (retry or statuses[t.id] == NOT_RUN)
    ]


def run_batch(
    agents: Agent | Sequence[Agent],
    tasks: list[Task],
    output: str | os.PathLike[str],
) -> Iterator[tuple[Task, RunResult]]:
    """Run each task as a new conversation, appending one JSON line to `output` as each
    finishes. A run that raises (the model failed) gets a line with status `error` and the
    exception's message as its detail, and ends the batch with `TaskFailed`.

    Given several agents (sharing one model, each with tools of its own), that many tasks run at
    once, each agent in a thread of its own: their model calls decode together, and one task's
    tool calls never hold up the others. Lines come in the order the tasks finish; after a
    failure no new task starts, the running ones finish and are written, then `TaskFailed`.
    """
    agents = [agents] if isinstance(agents, Agent) else list(agents)
    output = Path(output)
    if output.exists():
        drop_torn_line(output)  # an interrupted write
    with output.open("a", encoding="utf-8") as out:
        failure: TaskFailed | None = None
        for task, outcome in _outcomes(agents, tasks):
            if isinstance(outcome, Exception):
                record = {"id": task.id, "task": task.prompt, "final": None, "status": ERROR}
                _write(out, {**record, "detail": f"{type(outcome).__name__}: {outcome}"})
                failure = failure or TaskFailed(task, outcome)
                continue
            _write(out, {"id": task.id, "task": task.prompt, **outcome.to_dict()})
            yield task, outcome
        if failure is not None:
            raise failure


def _outcomes(
    agents: list[Agent], tasks: list[Task]
) -> Iterator[tuple[Task, RunResult | Exception]]:
    """Each task's result, or what its run raised, as the tasks finish."""
    if len(agents) == 1:
        for task in tasks:
            outcome = _attempt(agents[0], task)
            yield task, outcome
            if isinstance(outcome, Exception):
                return
        return
    todo = iter(tasks)
    lock = threading.Lock()
    stop = threading.Event()
    done: queue.Queue[tuple[Task, RunResult | Exception] | None] = queue.Queue()

    def work(agent: Agent) -> None:
        try:
            while not stop.is_set():
                with lock:
                    task = next(todo, None)
                if task is None:
                    return
                outcome = _attempt(agent, task)
                if isinstance(outcome, Exception):
                    stop.set()
                done.put((task, outcome))
        finally:
            done.put(None)

    workers = [
        threading.Thread(target=work, args=(a,), name=f"batch-{i}", daemon=True)
        for i, a in enumerate(agents)
    ]
    for w in workers:
        w.start()
    running = len(workers)
    while running:
        item = done.get()
        if item is None:
            running -= 1
        else:
            yield item


def _attempt(agent: Agent, task: Task) -> RunResult | Exception:
    try:
        agent.reset_tools()  # nothing of the previous task's kernel leaks into this one
        return agent.run(task.prompt)
    except Exception as e:
        return e


def _write(out: IO[str], record: dict[str, Any]) -> None:
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()
