"""The agent loop, driven by scripted harmony completions through the real encoder and parser."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import pytest
from openai_harmony import Conversation, Message, Role, ToolDescription, ToolNamespaceConfig

from harmony_agent.agent import Agent, AgentHooks, RunDone, RunResult
from harmony_agent.model import ScriptedModel, harmony_encoding
from harmony_agent.tools import BuiltinTool, RunContext, ToolCall, ToolError, function_tool

CALL_ADD = (
    '<|channel|>commentary to=functions.add <|constrain|>json<|message|>{"a": 2, "b": 3}<|call|>'
)
FINAL = "<|channel|>final<|message|>The answer is 5.<|return|>"


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first addend.
        b: The second addend.
    """
    return a + b


class Notes(BuiltinTool):
    """A small built-in namespace with two methods, as a plugin author would write one."""

    name = "notes"

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.closed = False

    def namespace_config(self) -> ToolNamespaceConfig:
        return ToolNamespaceConfig(
            name="notes",
            description="Keep notes.",
            tools=[
                ToolDescription.new("write", "Write a note."),
                ToolDescription.new("read", "Read all notes."),
            ],
        )

    async def call(self, call: ToolCall) -> str:
        if call.method == "write":
            self.notes.append(call.arguments)
            return f"saved note {len(self.notes)}"
        if not self.notes:
            raise ToolError("there are no notes yet")
        return "\n".join(self.notes)

    async def aclose(self) -> None:
        self.closed = True


def decode(tokens: list[int]) -> str:
    return harmony_encoding().decode(tokens)


def tool_messages(result: RunResult) -> list[Message]:
    return [m for m in result.messages if m.author.role == Role.TOOL]


def text(message: Message) -> str:
    return "".join(c.text for c in message.content)


def run(turns: list[str], tools: list | None = None, **kwargs) -> tuple[RunResult, ScriptedModel]:
    model = ScriptedModel(turns)
    result = Agent(model, tools=tools or [add], **kwargs).run("What is 2 + 3?")
    return result, model


# -- the normal path ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        CALL_ADD,
        # The header form models often emit: recipient before the channel.
        ' to=functions.add<|channel|>commentary <|constrain|>json<|message|>{"a": 2, "b": 3}'
        "<|call|>",
    ],
    ids=["to-after-channel", "to-before-channel"],
)
def test_tool_call_then_final(call: str) -> None:
    result, model = run([call, FINAL])
    assert result.status == "completed"
    assert result.final == "The answer is 5."
    [tool_message] = tool_messages(result)
    assert tool_message.author.name == "functions.add"
    assert tool_message.recipient == "assistant"
    assert tool_message.channel == "commentary"
    assert text(tool_message) == "5"
    # The second prompt holds the call and its result, rendered by harmony.
    second = decode(model.prompts[1])
    assert second.endswith(
        "<|start|>functions.add to=assistant<|channel|>commentary<|message|>5<|end|>"
        "<|start|>assistant"
    )
    assert result.usage.steps == 2 and result.usage.tool_calls == 1
    assert [m.author.role for m in result.messages] == [
        Role.USER,
        Role.ASSISTANT,
        Role.TOOL,
        Role.ASSISTANT,
    ]


@dataclasses.dataclass
class Ledger:
    calls: list[tuple[int, int]]


@function_tool
def add_and_log(ctx: RunContext[Ledger], a: int, b: int) -> int:
    """Add two integers, recording the call in the run's ledger."""
    ctx.context.calls.append((a, b))
    seen.append(ctx)
    return a + b


seen: list[RunContext[Ledger]] = []


def test_run_context_reaches_the_tool_and_not_the_model() -> None:
    call = CALL_ADD.replace("functions.add", "functions.add_and_log")
    ledger = Ledger([])
    seen.clear()
    model = ScriptedModel([call, FINAL])
    result = Agent(model, tools=[add_and_log]).run("What is 2 + 3?", context=ledger)
    assert result.status == "completed" and ledger.calls == [(2, 3)]
    [ctx] = seen
    assert ctx.recipient == "functions.add_and_log"
    assert [m.author.role for m in ctx.messages] == [Role.USER, Role.ASSISTANT]
    assert text(ctx.messages[0]) == "What is 2 + 3?"
    developer = decode(model.prompts[0])
    assert "add_and_log" in developer and "ctx" not in developer and "Ledger" not in developer


class Recorder(AgentHooks):
    """Plain and async methods alike; refuses calls whose arguments mention 99."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_run_start(self, prompt: str) -> None:  # type: ignore[override]
        self.seen.append(f"start {prompt}")

    async def on_model_call(self, step: int, prompt_tokens) -> None:  # type: ignore[no-untyped-def]
        self.seen.append(f"model {step} {len(prompt_tokens) > 0}")

    async def on_tool_start(self, call: ToolCall) -> None:
        self.seen.append(f"tool {call.recipient}")
        if "99" in call.arguments:
            raise ToolError("The user declined this call.")

    async def on_tool_end(self, call: ToolCall, output: str, is_error: bool) -> None:
        self.seen.append(f"done {output} {is_error}")

    async def on_run_end(self, result: RunResult) -> None:
        self.seen.append(f"end {result.status}")


def test_hooks_run_at_each_point_and_can_refuse_a_call() -> None:
    hooks = Recorder()
    refused = CALL_ADD.replace('"a": 2', '"a": 99')
    model = ScriptedModel([CALL_ADD, refused, FINAL])
    result = Agent(model, tools=[add], hooks=hooks).run("What is 2 + 3?")
    assert result.status == "completed"
    assert hooks.seen == [
        "start What is 2 + 3?",
        "model 1 True",
        "tool functions.add",
        "done 5 False",
        "model 2 True",
        "tool functions.add",
        "done The user declined this call. True",
        "model 3 True",
        "end completed",
    ]
    assert [text(m) for m in tool_messages(result)] == ["5", "The user declined this call."]


def test_prompts_equal_harmonys_rendering_of_the_whole_conversation() -> None:
    model = ScriptedModel(
        [
            "<|channel|>analysis<|message|>Add.<|end|><|start|>assistant" + CALL_ADD,
            "<|channel|>analysis to=notes.write<|message|>é 日本<|call|>",
            "<|channel|>commentary<|message|>Done soon.<|end|><|start|>assistant" + FINAL,
            "<|channel|>final<|message|>Again 5.<|return|>",
        ]
    )
    agent = Agent(model, tools=[add, Notes()], instructions="Be exact.")
    first = agent.run("What is 2 + 3?")
    second = agent.run("Again?", history=first)
    encoding = harmony_encoding()
    preamble = agent.preamble()
    # The conversation as the model saw it before each step (finished analysis dropped).
    seen = [first.messages[:1], first.messages[:4], first.messages[:6]]
    seen.append([m for m in second.messages[:8] if m.channel != "analysis"] + second.messages[8:9])
    for prompt, messages in zip(model.prompts, seen, strict=True):
        expected = encoding.render_conversation_for_completion(
            Conversation.from_messages([*preamble, *messages]), Role.ASSISTANT
        )
        assert prompt == expected


def test_prompt_declares_tools_effort_and_date() -> None:
    _, model = run(
        [FINAL],
        tools=[add, Notes()],
        reasoning_effort="high",
        current_date="2026-01-02",
        instructions="Answer briefly.",
    )
    prompt = decode(model.prompts[0])
    assert prompt.startswith("<|start|>system<|message|>")
    assert "Reasoning: high" in prompt
    assert "Current date: 2026-01-02" in prompt
    assert "Knowledge cutoff: 2024-06" in prompt
    assert "namespace notes {" in prompt  # the built-in namespace, in the system message
    assert "# Instructions\n\nAnswer briefly." in prompt
    assert "// Add two integers.\ntype add = (_: {\n// The first addend.\na: number," in prompt
    assert prompt.endswith("<|start|>user<|message|>What is 2 + 3?<|end|><|start|>assistant")


def test_events_stream_in_order() -> None:
    model = ScriptedModel(
        ["<|channel|>analysis<|message|>Add them.<|end|><|start|>assistant" + CALL_ADD, FINAL]
    )
    events = list(Agent(model, tools=[add]).stream("What is 2 + 3?"))
    kinds = [e.type for e in events]
    assert kinds[0] == "message" and kinds[-1] == "done"
    assert "".join(e.text for e in events if e.type == "reasoning.delta") == "Add them."
    assert "".join(e.text for e in events if e.type == "tool_call.delta") == '{"a": 2, "b": 3}'
    assert "".join(e.text for e in events if e.type == "final.delta") == "The answer is 5."
    call = next(e for e in events if e.type == "tool_call")
    result = next(e for e in events if e.type == "tool_result")
    assert kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("final.delta")
    assert call.call.recipient == "functions.add" and call.call.channel == "commentary"
    assert result.output == "5" and not result.is_error
    assert isinstance(events[-1], RunDone) and events[-1].result.final == "The answer is 5."


def test_commentary_preamble_is_its_own_event() -> None:
    model = ScriptedModel(
        ["<|channel|>commentary<|message|>Let me add.<|end|><|start|>assistant" + CALL_ADD, FINAL]
    )
    events = list(Agent(model, tools=[add]).stream("What is 2 + 3?"))
    assert "".join(e.text for e in events if e.type == "commentary.delta") == "Let me add."


def test_builtin_namespace_and_functions_alias() -> None:
    notes = Notes()
    result, _ = run(
        [
            "<|channel|>analysis to=notes.write<|message|>buy milk<|call|>",
            # Models sometimes address built-ins as developer functions.
            "<|channel|>commentary to=functions.notes.read<|message|>{}<|call|>",
            FINAL,
        ],
        tools=[notes],
    )
    first, second = tool_messages(result)
    assert (first.author.name, first.channel, text(first)) == (
        "notes.write",
        "analysis",
        "saved note 1",
    )
    assert (second.author.name, text(second)) == ("notes.read", "buy milk")
    assert result.status == "completed"


def test_async_function_tools_and_sync_tools_off_the_loop() -> None:
    threads = []

    @function_tool
    def where() -> str:
        threads.append(threading.current_thread())
        return "ok"

    @function_tool
    async def later(delay: float) -> str:
        await asyncio.sleep(delay)
        return f"slept {delay}"

    result, _ = run(
        [
            "<|channel|>commentary to=functions.where <|constrain|>json<|message|>{}<|call|>",
            '<|channel|>commentary to=functions.later<|message|>{"delay": 0.01}<|call|>',
            FINAL,
        ],
        tools=[where, later],
    )
    assert [text(m) for m in tool_messages(result)] == ["ok", "slept 0.01"]
    assert threads and threads[0] is not threading.main_thread()


def test_continuation_drops_finished_analysis() -> None:
    model = ScriptedModel(
        [
            "<|channel|>analysis<|message|>SECRET-THOUGHT<|end|><|start|>assistant" + CALL_ADD,
            FINAL,
            "<|channel|>analysis<|message|>second thought<|end|><|start|>assistant" + CALL_ADD,
            "<|channel|>final<|message|>Still 5.<|return|>",
        ]
    )
    agent = Agent(model, tools=[add])
    first = agent.run("What is 2 + 3?")
    second = agent.run("And again?", history=first)
    assert second.final == "Still 5."
    prompts = [decode(p) for p in model.prompts]
    assert "SECRET-THOUGHT" in prompts[1]  # within its own turn, reasoning stays
    assert "SECRET-THOUGHT" not in prompts[2] and "SECRET-THOUGHT" not in prompts[3]
    assert "The answer is 5." in prompts[2]
    # Every prompt of a turn extends the previous one, so a model can reuse its KV cache.
    assert model.prompts[3][: len(model.prompts[2])] == model.prompts[2]
    # The result keeps the whole conversation, reasoning included.
    assert "SECRET-THOUGHT" in "".join(text(m) for m in second.messages)
    assert sum(m.author.role == Role.USER for m in second.messages) == 2


# -- bad model output ---------------------------------------------------------------------------


def test_invalid_json_never_runs_the_tool() -> None:
    calls = []

    @function_tool
    def record(x: int) -> str:
        calls.append(x)
        return "ok"

    result, _ = run(
        ['<|channel|>commentary to=functions.record<|message|>{"x": 1,<|call|>', FINAL],
        tools=[record],
    )
    [message] = tool_messages(result)
    assert text(message).startswith("Invalid JSON in the arguments for functions.record:")
    assert "Send the arguments as one JSON object." in text(message)
    assert calls == [] and result.status == "completed"


def test_schema_violation_names_field_and_type() -> None:
    result, _ = run(
        ['<|channel|>commentary to=functions.add<|message|>{"a": "two", "c": 1}<|call|>', FINAL]
    )
    assert text(tool_messages(result)[0]) == (
        "Invalid arguments for functions.add:\n"
        "- unexpected field 'c'; allowed fields: a, b\n"
        "- missing required field 'b'\n"
        "- field 'a': expected integer, got string \"two\""
    )


def test_arguments_must_be_an_object() -> None:
    result, _ = run(["<|channel|>commentary to=functions.add<|message|>[2, 3]<|call|>", FINAL])
    assert text(tool_messages(result)[0]) == (
        "The arguments for functions.add must be a JSON object, got array [2, 3]."
    )


def test_unknown_recipient_lists_available_tools() -> None:
    result, _ = run(
        ['<|channel|>commentary to=functions.mul<|message|>{"a": 2}<|call|>', FINAL],
        tools=[add, Notes()],
    )
    [message] = tool_messages(result)
    assert message.author.name == "functions.mul"
    assert text(message) == (
        "Unknown tool 'functions.mul'. Available tools: functions.add, notes.write, notes.read."
    )


def test_tool_error_goes_back_to_the_model() -> None:
    result, _ = run(
        ["<|channel|>analysis to=notes.read<|message|><|call|>", FINAL], tools=[Notes()]
    )
    assert text(tool_messages(result)[0]) == "there are no notes yet"
    assert result.status == "completed"


def test_tool_that_raises() -> None:
    @function_tool
    def broken() -> str:
        raise RuntimeError("disk on fire")

    result, _ = run(
        ["<|channel|>commentary to=functions.broken<|message|>{}<|call|>", FINAL], tools=[broken]
    )
    assert text(tool_messages(result)[0]) == (
        "An error occurred while running the tool functions.broken. Please try again. "
        "Error: RuntimeError: disk on fire"
    )


def test_tool_that_times_out() -> None:
    @function_tool(timeout=0.05)
    async def slow() -> str:
        await asyncio.sleep(10)
        return "never"

    started = time.perf_counter()
    result, _ = run(
        ["<|channel|>commentary to=functions.slow<|message|>{}<|call|>", FINAL], tools=[slow]
    )
    assert (
        text(tool_messages(result)[0]) == "The call to functions.slow timed out after 0.05 seconds."
    )
    assert time.perf_counter() - started < 5
    assert result.status == "completed"


def test_agent_tool_timeout_applies_to_functions() -> None:
    @function_tool
    def sleepy() -> str:
        time.sleep(0.5)
        return "late"

    result, _ = run(
        ["<|channel|>commentary to=functions.sleepy<|message|>{}<|call|>", FINAL],
        tools=[sleepy],
        tool_timeout=0.05,
    )
    assert "timed out after 0.05 seconds" in text(tool_messages(result)[0])


@pytest.mark.parametrize(
    ("turn", "detail"),
    [
        ("<|channel|>final<|message|>The answ", "stopped in the middle of a message"),
        ("<|channel|>analysis<|message|>hmm<|return|>", "analysis channel"),
        ("<|channel|>commentary<|message|>x<|call|>", "addressed no tool"),
        ("plain text with no header<|return|>", "no complete message"),
        ("<|channel|><|channel|><|message|>x<|end|>", "not valid harmony"),
    ],
    ids=[
        "eos-inside-message",
        "return-on-analysis",
        "call-without-recipient",
        "no-header",
        "malformed-header",
    ],
)
def test_malformed_output_ends_cleanly(turn: str, detail: str) -> None:
    result, _ = run([turn])
    assert result.status == "invalid_output"
    assert detail in (result.detail or "")
    assert result.final is None


def test_messages_before_malformed_output_are_kept() -> None:
    result, _ = run(["<|channel|>analysis<|message|>ok so far<|end|><|message|>"])
    assert result.status == "invalid_output"
    assert [text(m) for m in result.messages[1:]] == ["ok so far"]


# -- limits -------------------------------------------------------------------------------------


def test_max_steps() -> None:
    result, model = run([CALL_ADD] * 3, max_steps=3)
    assert result.status == "max_steps"
    assert result.detail == "max_steps (3) reached without a final answer"
    assert len(model.prompts) == 3 and len(tool_messages(result)) == 3


def test_max_turn_tokens() -> None:
    long_answer = "<|channel|>final<|message|>" + "word " * 200 + "<|return|>"
    result, _ = run([long_answer], max_turn_tokens=20)
    assert result.status == "max_turn_tokens"
    assert result.usage.output_tokens == 20
    assert result.detail == "max_turn_tokens (20) reached inside one model turn"


def test_max_total_tokens_spans_steps() -> None:
    result, model = run([CALL_ADD, CALL_ADD, FINAL], max_total_tokens=40)
    assert result.status == "max_total_tokens"
    assert result.usage.output_tokens == 40
    # The call takes 24 tokens: the second step got only the 16 left and was cut off.
    assert len(model.prompts) == 2


def test_bad_limits_and_tools_are_rejected_up_front() -> None:
    with pytest.raises(ValueError, match="max_steps must be at least 1, got 0"):
        Agent(ScriptedModel([]), max_steps=0)
    with pytest.raises(ValueError, match=r"two tools answer to 'functions\.add'"):
        Agent(ScriptedModel([]), tools=[add, add])
    with pytest.raises(TypeError, match="not a tool"):
        Agent(ScriptedModel([]), tools=[print])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="reasoning_effort must be one of low, medium, high"):
        Agent(ScriptedModel([FINAL]), reasoning_effort="max").run("hi")  # type: ignore[arg-type]


# -- async and lifecycle ------------------------------------------------------------------------


def test_async_api_runs_inside_an_event_loop() -> None:
    async def main() -> RunResult:
        agent = Agent(ScriptedModel([CALL_ADD, FINAL]), tools=[add])
        with pytest.raises(RuntimeError, match=r"use `await agent\.arun"):
            agent.run("nested")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        result = await agent.arun("What is 2 + 3?")
        task.cancel()
        assert ticks > 0  # the loop kept running while the model generated
        return result

    assert asyncio.run(main()).final == "The answer is 5."


def test_abandoned_stream_leaves_the_agent_usable() -> None:
    model = ScriptedModel([FINAL, FINAL])
    agent = Agent(model, tools=[add])
    for event in agent.stream("first"):
        if event.type == "final.delta":
            break
    assert agent.run("second").final == "The answer is 5."


def test_ctrl_c_as_a_step_is_scheduled_leaves_the_agent_usable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ctrl-C lands where asyncio's runner has scheduled the next step but not run it (it checks
    # the SIGINT handler there): the step then starts as the stream closes. The user must see
    # the KeyboardInterrupt, not "aclose(): asynchronous generator is already running".
    import signal

    agent = Agent(ScriptedModel([FINAL, FINAL], delay=0.01), tools=[add])  # tokens come slowly
    events = agent.stream("first")
    while next(events).type != "final.delta":  # into the token stream
        pass
    getsignal = signal.getsignal

    def interrupted(sig: int) -> object:
        monkeypatch.setattr(signal, "getsignal", getsignal)
        raise KeyboardInterrupt

    monkeypatch.setattr(signal, "getsignal", interrupted)
    with pytest.raises(KeyboardInterrupt):
        next(events)
    assert agent.run("second").final == "The answer is 5."


def test_close_releases_builtin_tools() -> None:
    notes = Notes()
    with Agent(ScriptedModel([FINAL]), tools=[notes]) as agent:
        agent.run("hi")
    assert notes.closed


def test_model_errors_propagate() -> None:
    agent = Agent(ScriptedModel([FINAL]))
    agent.run("one")
    with pytest.raises(Exception, match="ran out of turns"):
        agent.run("two")
