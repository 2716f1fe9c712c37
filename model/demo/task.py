"""The demo model's synthetic agentic task: questions that can only be answered with a tool.

Two kinds of question, each rendered as a full harmony turn (reasoning, tool call, tool result,
final answer):

- arithmetic (`What is 37 * 41 + 5?`): the model copies the expression into python code on the
  analysis channel (`print(37 * 41 + 5)`), reads the tool's output and copies it into the answer
  (`37 * 41 + 5 = 1522`);
- unit conversion (`Convert 12 km to miles.`): the model calls the developer function
  `convert_units` on the commentary channel with JSON arguments copied from the question, then
  copies the function's result into the answer.

Anything else (greetings, general knowledge, requests it cannot do: `other_task`) gets a short
reasoning and one fixed final answer saying what the model can do and how to load gpt-oss
weights, with no tool call. A conversation asks one to three questions in a row
(`make_conversation`), so the model learns to answer follow-ups with the earlier turns in view.

This module knows nothing of the agent: the system and developer messages (what the agent's
`preamble()` renders, which depends on the tools and the date) are passed in, so the training
data holds exactly the prompts the agent shows at run time.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from openai_harmony import Author, Message, Role

Kind = Literal["arithmetic", "convert", "other"]

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
    recipient: str | None
    """`python`, `functions.convert_units`, or None (no tool: `other` questions)."""
    answer: str
    """The final answer."""
    call: str = ""
    """The call's content: code, or JSON arguments."""
    result: str = ""
    """What the tool returns (the python tool's stdout; the function's result as JSON)."""


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


# --- everything else ------------------------------------------------------------------------------

OTHER_ANSWER = (
    "I am a tiny demo model: I can only do arithmetic (with the python tool) and unit "
    "conversions. For anything else, load gpt-oss weights: harmony-agent run --model "
    '/path/to/gpt-oss-20b "your question"'
)
"""The demo model's one answer to anything it cannot do."""
OTHER_REASONING = "This is not arithmetic or a unit conversion, the only things I can do."

# Questions other than the task, from templates and word lists. Each list is split in two:
# training draws only from the first part; held-out questions use a held-out template or only
# held-out words, so none of them is a training question.
# fmt: off
_OTHER_TEMPLATES: tuple[tuple[str, ...], tuple[str, ...]] = (
    (
        "hello", "hi", "hey", "hello there", "hey there", "good morning", "good afternoon",
        "greetings", "how are you?", "how are you doing today?", "what's up?", "thanks",
        "thank you", "thanks a lot", "ok", "cool", "great, thanks", "bye", "goodbye",
        "who are you?", "what are you?", "what can you do?", "help", "what tools do you have?",
        "are you gpt-oss?", "can you help me?", "what is your name?", "nice to meet you",
        "tell me a joke", "I am bored", "test",
        "Who wrote {work}?", "Who painted {painting}?", "What is the capital of {country}?",
        "Who was {person}?", "Tell me about {topic}.", "Explain {topic}.", "What is {topic}?",
        "Why is {fact}?", "How many {part} does a {animal} have?", "When did {event} happen?",
        "Where is {place}?", "Summarize {work}.", "Write a {form} about {topic}.",
        "Translate '{phrase}' into {language}.", "What's the weather in {city}?",
        "Book a table for two in {city}.", "Search the web for {topic}.",
        "Tell me a joke about the {animal}.", "Recommend a book about {topic}.",
        "What time is it in {city}?", "Convert {v} {unit} to {unit2}.",
        "How many {unit2} is {v} {unit}?", "What is {v} {unit} in {unit2}?",
        "Plan a trip to {city}.", "Is {person} still alive?",
    ),
    (
        "hiya", "good evening", "howdy", "hey, how's it going?", "thanks so much!",
        "what are you able to do?", "who made you?", "see you later", "yo",
        "are you a real model?", "what else can you do?", "please help",
        "Who is the author of {work}?", "Can you explain {topic} to me?",
        "What do you know about {person}?", "Which country is {place} in?",
        "What's the population of {country}?", "How does {topic} work?",
        "Can you write me a {form} on {topic}?", "How do you say '{phrase}' in {language}?",
        "Will it rain in {city} tomorrow?", "Find me a cheap flight to {city}.",
        "Please convert {v} {unit} into {unit2}.", "Who invented {invention}?",
    ),
)
_OTHER_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "work": (
        ("Macbeth", "Othello", "Don Quixote", "War and Peace", "Pride and Prejudice",
         "The Odyssey", "Moby Dick", "Faust", "Ulysses", "The Iliad", "Jane Eyre", "Dracula",
         "Frankenstein", "The Hobbit", "Anna Karenina", "Les Miserables"),
        ("Hamlet", "King Lear", "Crime and Punishment", "The Divine Comedy", "Emma"),
    ),
    "painting": (
        ("the Mona Lisa", "The Starry Night", "The Last Supper", "Guernica", "The Scream"),
        ("The Night Watch", "Las Meninas", "The Birth of Venus"),
    ),
    "country": (
        ("France", "Germany", "Japan", "Brazil", "Canada", "Egypt", "India", "Kenya", "Mexico",
         "Norway", "Peru", "Spain", "Italy", "Chile"),
        ("Australia", "Vietnam", "Poland", "Morocco", "Argentina"),
    ),
    "person": (
        ("Albert Einstein", "Marie Curie", "Isaac Newton", "Napoleon", "Cleopatra",
         "Ada Lovelace", "Mozart", "Gandhi", "Charles Darwin", "Alan Turing"),
        ("Leonardo da Vinci", "Nikola Tesla", "Frida Kahlo", "Confucius"),
    ),
    "topic": (
        ("photosynthesis", "gravity", "black holes", "the French revolution",
         "quantum computing", "machine learning", "the stock market", "climate change", "DNA",
         "volcanoes", "democracy", "the internet", "evolution", "rainbows"),
        ("the Roman empire", "blockchain", "tides", "the immune system", "jazz"),
    ),
    "fact": (
        ("the sky blue", "the sea salty", "grass green", "ice slippery"),
        ("the sun hot", "snow white"),
    ),
    "animal": (
        ("spider", "dog", "cat", "bird", "horse", "fish", "cow", "ant"),
        ("octopus", "lion", "bee", "shark"),
    ),
    "part": (("legs", "eyes", "teeth", "wings"), ("hearts", "bones")),
    "event": (
        ("the moon landing", "World War II", "the fall of the Berlin Wall", "the Renaissance"),
        ("the Industrial Revolution", "the Black Death"),
    ),
    "place": (
        ("the Eiffel Tower", "Mount Everest", "the Amazon river", "the Sahara",
         "Machu Picchu"),
        ("the Taj Mahal", "Stonehenge", "the Great Barrier Reef"),
    ),
    "form": (("poem", "story", "song", "haiku", "essay", "limerick"), ("sonnet", "riddle")),
    "phrase": (
        ("good morning", "thank you", "where is the station", "I love you",
         "see you tomorrow"),
        ("how much is this", "happy birthday"),
    ),
    "language": (
        ("French", "German", "Spanish", "Japanese", "Italian", "Chinese", "Russian"),
        ("Portuguese", "Dutch", "Korean"),
    ),
    "city": (
        ("Paris", "London", "Tokyo", "Berlin", "New York", "Rome", "Madrid", "Sydney",
         "Cairo", "Toronto"),
        ("Lisbon", "Seoul", "Chicago", "Mumbai", "Oslo"),
    ),
    # Units `convert_units` does not know: a conversion request is not enough to call it.
    "unit": (
        ("liters", "gallons", "dollars", "euros", "hours", "minutes", "inches", "ounces",
         "yards", "bytes"),
        ("grams", "seconds", "kelvin", "acres", "cups"),
    ),
    "invention": ((), ("the telephone", "the printing press", "the light bulb")),
}
# fmt: on
_WORDS_ALIAS = {"unit2": "unit"}


def other_task(rng: random.Random, *, held_out: bool = False) -> Task:
    """A question the demo cannot answer with its tools, answered with `OTHER_ANSWER`.

    `held_out` draws a held-out template (any words), or a training template with held-out words
    only; otherwise a training template with training words, its first letter and final
    punctuation varied the way people type."""
    train, held = _OTHER_TEMPLATES
    if not held_out:
        template, part = rng.choice(train), 0
    elif rng.random() < 0.5:
        template, part = rng.choice(held), rng.choice((0, 1))
    else:
        template, part = rng.choice([t for t in train if "{" in t]), 1

    def word(name: str) -> str:
        options = _OTHER_WORDS[_WORDS_ALIAS.get(name, name)]
        return rng.choice(options[part] or options[1 - part])

    fields = {name: word(name) for name in _fields(template) if name != "v"}
    while "unit2" in fields and fields["unit2"] == fields["unit"]:
        fields["unit2"] = word("unit2")
    question = template.format(v=_operand(rng), **fields)
    if not held_out:
        if rng.random() < 0.2:
            question = question[:1].swapcase() + question[1:]
        if rng.random() < 0.2 and question[-1] in ".?!":
            question = question[:-1]
    return Task(
        kind="other",
        question=question,
        reasoning=OTHER_REASONING,
        recipient=None,
        answer=OTHER_ANSWER,
    )


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def make_turn(rng: random.Random, other_share: float = 0.2) -> Task:
    """One question of a training conversation: the task, or now and then something else."""
    return other_task(rng) if rng.random() < other_share else make_task(rng)


TURN_WEIGHTS = (0.4, 0.3, 0.3)
"""How often a training conversation asks 1, 2, 3 questions (up to its `max_turns`)."""


def make_conversation(rng: random.Random, max_turns: int = 3) -> list[Task]:
    """The questions of one training conversation, in order."""
    n = rng.choices(range(1, max_turns + 1), TURN_WEIGHTS[:max_turns])[0]
    return [make_turn(rng) for _ in range(n)]


def turn_messages(task: Task) -> list[Message]:
    """One turn: question, reasoning, then the call and the tool's result (when the task has a
    tool), then the final answer."""
    messages = [
        Message.from_role_and_content(Role.USER, task.question),
        Message.from_role_and_content(Role.ASSISTANT, task.reasoning).with_channel("analysis"),
    ]
    if task.recipient is not None:
        channel = "analysis" if task.recipient == "python" else "commentary"
        call = Message.from_role_and_content(Role.ASSISTANT, task.call)
        call = call.with_channel(channel).with_recipient(task.recipient)
        if channel == "commentary":
            call = call.with_content_type("<|constrain|>json")
        tool = Message.from_author_and_content(Author.new(Role.TOOL, task.recipient), task.result)
        messages += [call, tool.with_recipient("assistant").with_channel(channel)]
    final = Message.from_role_and_content(Role.ASSISTANT, task.answer).with_channel("final")
    return [*messages, final]


def conversation_messages(tasks: Sequence[Task], preamble: Sequence[Message]) -> list[Message]:
    """The whole conversation: the preamble, then every turn in full (the training data reader,
    `model.train.data`, drops the analysis of finished turns as the agent does)."""
    return [*preamble, *(m for task in tasks for m in turn_messages(task))]


def task_messages(task: Task, preamble: Sequence[Message]) -> list[Message]:
    """A conversation of one question."""
    return conversation_messages([task], preamble)


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
    max_turns: int = 3,
    current_date: str | None = DEMO_CURRENT_DATE,
) -> list[list[Task]]:
    """Write `count` conversations (`make_conversation`, up to `max_turns` questions) to a
    transcript JSONL file (each starts with its system message, which is how a reader tells them
    apart); returns their questions.

    `preamble(date)` gives the system and developer messages for a current date; `current_date`
    None draws a random date per conversation. One fixed date makes every prompt start with the
    same tokens, which training shares across a batch (`finetune.forward_batch`): several
    times faster on a CPU.
    """
    rng = random.Random(seed)
    conversations = []
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(count):
            tasks = make_conversation(rng, max_turns)
            conversations.append(tasks)
            date = current_date or random_date(rng)
            for message in conversation_messages(tasks, preamble(date)):
                record = {"type": "message", "message": message.to_dict()}
                f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            f.write(json.dumps({"type": "run", "status": "completed"}) + "\n")
    return conversations


TRAINING_SETS = ((0, 10000, 1), (1, 6000, 3))
"""(seed, count, max_turns) of each transcript file the demo model was trained on."""


def training_questions(sets: Sequence[tuple[int, int, int]] = TRAINING_SETS) -> set[str]:
    """The questions of the training files (`write_transcripts` draws conversations, and nothing
    else from its generator when the date is fixed)."""
    questions = set()
    for seed, count, max_turns in sets:
        rng = random.Random(seed)
        for _ in range(count):
            questions.update(task.question for task in make_conversation(rng, max_turns))
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


def held_out_conversations(
    count: int, turns: int, seed: int = 20_000, exclude: set[str] | frozenset[str] = frozenset()
) -> list[list[Task]]:
    """`count` conversations of `turns` held-out task questions each (follow-up questions)."""
    tasks = held_out_tasks(count * turns, seed + turns, exclude)
    return [tasks[i : i + turns] for i in range(0, len(tasks), turns)]


def held_out_other(
    count: int, seed: int = 30_000, exclude: set[str] | frozenset[str] = frozenset()
) -> list[Task]:
    """`count` distinct held-out questions outside the task (see `other_task`), none in
    `exclude`."""
    rng = random.Random(seed)
    tasks: dict[str, Task] = {}
    for _ in range(100 * count):
        task = other_task(rng, held_out=True)
        if task.question not in exclude:
            tasks.setdefault(task.question, task)
        if len(tasks) == count:
            break
    return list(tasks.values())
