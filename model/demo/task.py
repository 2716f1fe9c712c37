"""The demo model's synthetic agentic task: questions that can only be answered with a tool.

Two kinds of question, each rendered as a full harmony conversation (reasoning, tool call, tool
result, final answer):

- arithmetic (`What is 37 * 41 + 5?`): the model copies the expression into python code on the
  analysis channel (`print(37 * 41 + 5)`), reads the tool's output and copies it into the answer
  (`37 * 41 + 5 = 1522`);
- unit conversion (`Convert 12 km to miles.`): the model calls the developer function
  `convert_units` on the commentary channel with JSON arguments copied from the question, then
  copies the function's result into the answer.

This module knows nothing of the agent: the system and developer messages (what the agent's
`preamble()` renders, which depends on the tools and the date) are passed in, so the training
data holds exactly the prompts the agent shows at run time.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from openai_harmony import Author, Message, Role

Kind = Literal["arithmetic", "convert"]

# Factors between units; temperatures are affine and handled apart.
_FACTORS = {
    ("km", "miles"): 0.621371,
    ("miles", "km"): 1.609344,
    ("kg", "pounds"): 2.204623,
    ("pounds", "kg"): 0.453592,
    ("meters", "feet"): 3.280840,
    ("feet", "meters"): 0.3048,
}
UNIT_PAIRS: tuple[tuple[str, str], ...] = (
    *_FACTORS,
    ("celsius", "fahrenheit"),
    ("fahrenheit", "celsius"),
)


def convert_units(value: float, from_unit: str, to_unit: str) -> float:
    """Convert a value between units: km, miles, kg, pounds, meters, feet, celsius, fahrenheit."""
    if (from_unit, to_unit) == ("celsius", "fahrenheit"):
        result = value * 9 / 5 + 32
    elif (from_unit, to_unit) == ("fahrenheit", "celsius"):
        result = (value - 32) * 5 / 9
    elif (from_unit, to_unit) in _FACTORS:
        result = value * _FACTORS[from_unit, to_unit]
    else:
        raise ValueError(f"cannot convert {from_unit} to {to_unit}")
    return round(result, 2)


@dataclass(frozen=True)
class Task:
    """One question, the tool call that answers it and the expected final answer."""

    kind: Kind
    question: str
    reasoning: str
    """The analysis message before the call."""
    recipient: str
    """`python` or `functions.convert_units`."""
    call: str
    """The call's content: code, or JSON arguments."""
    result: str
    """What the tool returns (the python tool's stdout; the function's result as JSON)."""
    answer: str
    """The final answer."""


_ARITH_QUESTIONS = (
    "What is {e}?",
    "Compute {e}.",
    "Calculate {e}.",
    "What's {e}?",
    "Please evaluate {e}.",
    "How much is {e}?",
)
_CONVERT_QUESTIONS = (
    "Convert {v} {a} to {b}.",
    "How many {b} is {v} {a}?",
    "What is {v} {a} in {b}?",
    "Please convert {v} {a} into {b}.",
)


def arithmetic_task(rng: random.Random) -> Task:
    """A question over two or three integers with +, - and * (operands below 1000)."""
    n = rng.choice((2, 2, 3))
    parts = [str(_operand(rng))]
    for _ in range(n - 1):
        parts += [rng.choice("+-*"), str(_operand(rng))]
    expr = " ".join(parts)
    value = str(eval(expr))
    return Task(
        kind="arithmetic",
        question=rng.choice(_ARITH_QUESTIONS).format(e=expr),
        reasoning=f"I need to compute {expr}. I will use python.",
        recipient="python",
        call=f"print({expr})",
        result=value,
        answer=f"{expr} = {value}",
    )


def convert_task(rng: random.Random) -> Task:
    """A unit conversion answered by the `convert_units` developer function."""
    a, b = rng.choice(UNIT_PAIRS)
    v = _operand(rng)
    args = json.dumps({"value": v, "from_unit": a, "to_unit": b})
    result = json.dumps(convert_units(v, a, b))  # as the function tool returns a float
    return Task(
        kind="convert",
        question=rng.choice(_CONVERT_QUESTIONS).format(v=v, a=a, b=b),
        reasoning=f"The user wants {v} {a} in {b}. I will call convert_units.",
        recipient="functions.convert_units",
        call=args,
        result=result,
        answer=f"{v} {a} is {result} {b}.",
    )


def _operand(rng: random.Random) -> int:
    # Favour short numbers as people do, but cover every 1-3 digit token.
    return rng.choice((rng.randint(1, 9), rng.randint(10, 99), rng.randint(100, 999)))


def make_task(rng: random.Random, convert_share: float = 0.3) -> Task:
    return convert_task(rng) if rng.random() < convert_share else arithmetic_task(rng)


def task_messages(task: Task, preamble: Sequence[Message]) -> list[Message]:
    """The whole conversation: preamble, question, reasoning, call, tool result, final answer."""
    channel = "analysis" if task.recipient == "python" else "commentary"
    call = Message.from_role_and_content(Role.ASSISTANT, task.call)
    call = call.with_channel(channel).with_recipient(task.recipient)
    if channel == "commentary":
        call = call.with_content_type("<|constrain|>json")
    tool = Message.from_author_and_content(Author.new(Role.TOOL, task.recipient), task.result)
    return [
        *preamble,
        Message.from_role_and_content(Role.USER, task.question),
        Message.from_role_and_content(Role.ASSISTANT, task.reasoning).with_channel("analysis"),
        call,
        tool.with_recipient("assistant").with_channel(channel),
        Message.from_role_and_content(Role.ASSISTANT, task.answer).with_channel("final"),
    ]


def random_date(rng: random.Random) -> str:
    """A date from 2024 to 2030: the model must not depend on the day it runs."""
    return f"{rng.randint(2024, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


DEMO_CURRENT_DATE = "2025-06-01"
"""The current date the demo model was trained with: the agent must state this date to it."""


def write_transcripts(
    path: str,
    count: int,
    *,
    seed: int,
    preamble: Callable[[str], Sequence[Message]],
    current_date: str | None = DEMO_CURRENT_DATE,
    convert_share: float = 0.3,
) -> list[Task]:
    """Write `count` conversations to a transcript JSONL file (each starts with its system
    message, which is how a reader tells them apart).

    `preamble(date)` gives the system and developer messages for a current date; `current_date`
    None draws a random date per conversation. One fixed date makes every prompt start with the
    same tokens, which training shares across a batch (`finetune.forward_batch`): several
    times faster on a CPU.
    """
    rng = random.Random(seed)
    tasks = []
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(count):
            task = make_task(rng, convert_share)
            tasks.append(task)
            date = current_date or random_date(rng)
            for message in task_messages(task, preamble(date)):
                record = {"type": "message", "message": message.to_dict()}
                f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            f.write(json.dumps({"type": "run", "status": "completed"}) + "\n")
    return tasks


TRAINING_SETS = ((0, 6000), (1, 6000))
"""(seed, count) of each transcript file the demo model was trained on."""


def training_questions(sets: Sequence[tuple[int, int]] = TRAINING_SETS) -> set[str]:
    """The questions of the training files (`write_transcripts` draws one task per conversation,
    and nothing else from its generator when the date is fixed)."""
    questions = set()
    for seed, count in sets:
        rng = random.Random(seed)
        questions.update(make_task(rng).question for _ in range(count))
    return questions


def held_out_tasks(
    count: int, seed: int = 10_000, exclude: set[str] | frozenset[str] = frozenset()
) -> list[Task]:
    """Questions for evaluation, drawn with a seed the training data does not use; questions in
    `exclude` (e.g. `training_questions()`: short ones recur) are skipped."""
    rng = random.Random(seed)
    tasks: list[Task] = []
    while len(tasks) < count:
        task = make_task(rng)
        if task.question not in exclude:
            tasks.append(task)
    return tasks
