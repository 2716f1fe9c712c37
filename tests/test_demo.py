"""The demo model and its synthetic task: the task's answers are right, its transcripts train, the
shipped file is small and loads through `load_model`, and the model answers held-out questions
through the real agent loop with the sandboxed python tool, greedily."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _support import requires_sandbox
from openai_harmony import Message, Role, SystemContent

from harmony_agent.model import Sampling, harmony_encoding
from harmony_agent.model.demo import DEMO_CURRENT_DATE, WEIGHTS, demo_model_path, load_demo_model
from harmony_agent.model.demo.task import (
    convert_units,
    held_out_tasks,
    task_messages,
    training_questions,
    write_transcripts,
)
from harmony_agent.model.train.data import load_examples

HELD_OUT = 24
"""Held-out questions in CI: a few seconds of CPU each, python tool included."""


def test_task_answers_are_right() -> None:
    for task in held_out_tasks(300):
        if task.kind == "arithmetic":
            expr = task.call.removeprefix("print(").removesuffix(")")
            assert task.result == str(eval(expr))
            assert expr in task.question and task.answer == f"{expr} = {task.result}"
        else:
            args = json.loads(task.call)
            assert json.loads(task.result) == convert_units(**args)
            assert str(args["value"]) in task.question and task.result in task.answer
    assert convert_units(100, "celsius", "fahrenheit") == 212.0
    with pytest.raises(ValueError, match="cannot convert km to kg"):
        convert_units(1, "km", "kg")


def test_training_questions_are_those_of_the_training_files(tmp_path: Path) -> None:
    system = Message.from_role_and_content(Role.SYSTEM, SystemContent.new())
    tasks = write_transcripts(str(tmp_path / "t.jsonl"), 50, seed=7, preamble=lambda d: [system])
    assert {t.question for t in tasks} == training_questions([(7, 50)])
    train = training_questions()
    held = held_out_tasks(200, exclude=train)
    assert not any(t.question in train for t in held)


def test_task_transcripts_are_training_examples(tmp_path: Path) -> None:
    system = Message.from_role_and_content(
        Role.SYSTEM, SystemContent.new().with_conversation_start_date(DEMO_CURRENT_DATE)
    )
    path = tmp_path / "train.jsonl"
    tasks = write_transcripts(str(path), 5, seed=3, preamble=lambda date: [system])
    examples = load_examples([path])
    assert len(examples) == 5
    enc = harmony_encoding()
    for task, example in zip(tasks, examples, strict=True):
        text = enc.decode(example.tokens)
        assert text.endswith(f"<|channel|>final<|message|>{task.answer}<|return|>")
        assert f"<|message|>{task.call}<|call|>" in text
    assert task_messages(tasks[0], [system])[0] is system


def test_shipped_weights_are_small_and_load() -> None:
    assert WEIGHTS.stat().st_size < 4_000_000
    model = load_demo_model()
    config = model.config
    assert config.vocab_size == 201088  # the real o200k harmony vocabulary
    assert config.num_hidden_layers >= 2 and config.num_experts > config.experts_per_token
    assert type(model.transformer.block[0].mlp.experts).__name__ == "MXFP4Experts"
    assert model.transformer.block[0].attn.window is not None  # sliding layer
    assert model.transformer.block[1].attn.window is None  # full layer
    assert demo_model_path() == demo_model_path()  # expanded once
    logits = model.logits([200006, 200008])
    assert logits.shape == (2, 201088) and torch.isfinite(logits).all()


@requires_sandbox
def test_demo_model_answers_held_out_questions_through_the_agent() -> None:
    from harmony_agent.agent import Agent
    from harmony_agent.tools import function_tool
    from harmony_agent.tools.python_tool import PythonTool

    torch.set_num_threads(1)
    tasks = held_out_tasks(HELD_OUT, exclude=training_questions())
    model = load_demo_model()
    tools = [PythonTool(), function_tool(convert_units)]
    right, wrong = 0, []
    greedy = Sampling(temperature=0)
    with Agent(model, tools=tools, sampling=greedy, current_date=DEMO_CURRENT_DATE,
               max_steps=4, max_turn_tokens=256) as agent:  # fmt: skip
        for task in tasks:
            result = agent.run(task.question)
            calls = [m.recipient for m in result.messages if m.recipient not in (None, "assistant")]
            if result.final == task.answer and calls == [task.recipient]:
                right += 1
            else:
                wrong.append((task.question, result.status, result.final))
    assert {t.kind for t in tasks} == {"arithmetic", "convert"}
    assert right / len(tasks) >= 0.95, wrong


def test_a_conversation_that_fills_the_context_ends_with_max_context() -> None:
    """The engine's max_context bounds the run: cut mid-turn, or refused before a model call."""
    from harmony_agent.agent import Agent
    from harmony_agent.agent.terminal import turn_summary

    greedy = Sampling(temperature=0)
    question = "What is 37 * 41 + 5?"
    with Agent(load_demo_model(progress=False), sampling=greedy, max_steps=1,
               current_date=DEMO_CURRENT_DATE) as agent:  # fmt: skip
        prompt = agent.run(question).usage.prompt_tokens
    with Agent(load_demo_model(max_context=prompt + 5, progress=False), sampling=greedy,
               current_date=DEMO_CURRENT_DATE) as agent:  # fmt: skip
        result = agent.run(question)
    assert result.status == "max_context" and result.usage.output_tokens == 5
    assert (result.usage.context_tokens, result.usage.context_limit) == (prompt + 5, prompt + 5)
    assert f"context {prompt + 5}/{prompt + 5} (100%)" in str(turn_summary(result))
    assert result.detail == (
        f"the conversation ({prompt} tokens before this turn) filled the model's context of "
        f"{prompt + 5} tokens"
    )
    with Agent(load_demo_model(max_context=prompt, progress=False), sampling=greedy,
               current_date=DEMO_CURRENT_DATE) as agent:  # fmt: skip
        result = agent.run(question)
    assert result.status == "max_context" and result.usage.steps == 0


def test_running_the_demo_imports_no_training_code(tmp_path: Path) -> None:
    # A fresh process and cache: the expansion of the compact file is part of what runs.
    code = (
        "import sys\nfrom harmony_agent.agent.cli import main\n"
        "code = main(['run', '--max-tokens', '64', 'What is 2 + 3?'])\n"
        # The `finetune` subcommand's argument parser is registered; nothing that trains loads.
        "parser = {'harmony_agent.model.train.cli', 'model.finetune_cli'}\n"
        "loaded = sorted(m for m in sys.modules if 'model.' in m and m not in parser\n"
        "                and any(w in m for w in ('train.', 'finetune', 'lora')))\n"
        "print('TRAINING MODULES', loaded)\nsys.exit(code)"
    )
    env = {**os.environ, "HARMONY_AGENT_CACHE": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert "TRAINING MODULES []" in proc.stdout, proc.stdout + proc.stderr
