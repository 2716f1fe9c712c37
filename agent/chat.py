"""The interactive terminal agent: a conversation, commands, and Ctrl-C that stops only the
current answer."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from openai_harmony import Message
from rich.console import Console

from harmony_agent.model import ScriptExhausted

from .agent import Agent
from .chat_input import KEYS_HELP, message_reader
from .conversation import strip_preamble
from .events import RunDone, ToolCalled
from .terminal import EventView
from .transcript import TranscriptError, TranscriptWriter, load_transcript

HELP = """\
/effort [low|medium|high]  show or set the reasoning effort
/reasoning                 show or hide the model's reasoning
/raw                       show or hide every message as raw harmony text
/tools                     list the tools the model may call
/reset                     start a new conversation (and a fresh python kernel)
/save FILE                 save the conversation as a JSONL transcript
/load FILE                 continue a conversation from a transcript
/help                      this help
/quit                      leave (also Ctrl-D)
Ctrl-C stops the answer being generated; the conversation stays as it was before it (what
its tool calls did, such as files written, stays too)."""


class Chat:
    """A conversation with an agent at the terminal."""

    def __init__(
        self,
        agent: Agent,
        console: Console | None = None,
        *,
        show_reasoning: bool = True,
        transcript: str | None = None,
        read_line: Callable[[str], str] | None = None,
        resolve_citations: Callable[[str], str] | None = None,
    ) -> None:
        self.agent = agent
        self.console = console or Console(highlight=False)
        self.view = EventView(
            self.console, show_reasoning=show_reasoning, resolve_citations=resolve_citations
        )
        self.transcript = transcript
        self.history: list[Message] = load_transcript(transcript) if _exists(transcript) else []
        self.read_line = read_line or message_reader()
        self._commands: dict[str, Callable[[str], bool]] = {
            "/effort": self._effort,
            "/reasoning": self._reasoning,
            "/raw": self._raw,
            "/tools": self._tools,
            "/reset": self._reset,
            "/save": self._save,
            "/load": self._load,
            "/help": self._help,
            "/quit": lambda _: False,
            "/exit": lambda _: False,
        }

    def loop(self) -> None:
        """Read and answer until /quit or end of input."""
        self.console.print(
            f"[bold]harmony-agent[/bold] · effort {self.agent.reasoning_effort} · tools: "
            f"{', '.join(self.agent.tool_recipients()) or 'none'} · /help for commands",
            highlight=False,
        )
        while True:
            try:
                line = self.read_line("› ").strip()
            except EOFError:
                self.console.print()
                return
            except KeyboardInterrupt:
                self.console.print()
                continue
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
                continue
            self.ask(line)

    def command(self, line: str) -> bool:
        """Run a /command; False means leave."""
        name, _, argument = line.partition(" ")
        handler = self._commands.get(name)
        if handler is None:
            self.console.print(f"unknown command {name}; /help lists them", style="yellow")
            return True
        return handler(argument.strip())

    def ask(self, prompt: str) -> None:
        """One user turn: stream the agent's answer; Ctrl-C abandons the turn."""
        called: list[str] = []  # tools this turn ran: what they did outlives an abandoned turn
        try:
            for event in self.agent.stream(prompt, history=self.history,
                                           transcript=self.transcript):  # fmt: skip
                self.view(event)
                if isinstance(event, ToolCalled):
                    called.append(event.call.recipient)
                if isinstance(event, RunDone):
                    self.history = event.result.messages
        except KeyboardInterrupt:
            self.view.close()
            self.console.print(f"\n[yellow]stopped[/yellow] ({self._not_kept(called)})")
        except ScriptExhausted as e:  # the conversation so far stays: /save still works
            self.view.close()
            self.console.print(f"error: {e} ({self._not_kept(called)})", style="red", markup=False)

    def _not_kept(self, called: list[str]) -> str:
        """What an abandoned turn leaves: the conversation drops it, its tools' effects stay."""
        known = set(self.agent.tool_recipients())  # a call to no tool did nothing
        tools = [t for t in dict.fromkeys(called) if t in known]
        if not tools:
            return "this turn is not kept"
        return f"this turn is not kept; the effects of its {', '.join(tools)} calls remain"

    def _effort(self, argument: str) -> bool:
        if argument:
            if argument not in ("low", "medium", "high"):
                self.console.print("effort is low, medium or high", style="yellow")
                return True
            self.agent.reasoning_effort = argument  # type: ignore[assignment]
        self.console.print(f"reasoning effort: {self.agent.reasoning_effort}")
        return True

    def _reasoning(self, _: str) -> bool:
        self.view.show_reasoning = not self.view.show_reasoning
        self.console.print(f"reasoning {'shown' if self.view.show_reasoning else 'hidden'}")
        return True

    def _raw(self, _: str) -> bool:
        self.view.raw = not self.view.raw
        self.console.print(f"raw harmony {'shown' if self.view.raw else 'hidden'}")
        return True

    def _tools(self, _: str) -> bool:
        recipients = self.agent.tool_recipients()
        self.console.print("\n".join(recipients) if recipients else "no tools")
        return True

    def _reset(self, _: str) -> bool:
        self.history = []
        self.agent.reset_tools()  # a fresh python kernel: no variables of the old conversation
        self.console.print("new conversation")
        return True

    def _save(self, argument: str) -> bool:
        if not argument:
            self.console.print("usage: /save FILE", style="yellow")
            return True
        path = Path(argument).expanduser()
        if path.exists():
            self.console.print(f"{path} exists; choose a new file", style="yellow")
            return True
        try:
            writer = TranscriptWriter(path)
        except OSError as e:
            self.console.print(f"cannot save to {path}: {e}", style="red")
            return True
        for message in [*self.agent.preamble(), *self.history]:
            writer.message(message)
        writer.close()
        self.console.print(f"saved {len(self.history)} messages to {path}")
        return True

    def _load(self, argument: str) -> bool:
        if not argument:
            self.console.print("usage: /load FILE", style="yellow")
            return True
        try:
            self.history = strip_preamble(load_transcript(Path(argument).expanduser()))
        except TranscriptError as e:
            self.console.print(str(e), style="red")
            return True
        self.agent.reset_tools()  # the kernel's state belonged to the conversation left
        self.console.print(f"loaded {len(self.history)} messages from {argument}")
        return True

    def _help(self, _: str) -> bool:
        self.console.print(f"{HELP}\n{KEYS_HELP}.", highlight=False, markup=False)
        return True


def _exists(path: str | None) -> bool:
    return path is not None and os.path.exists(path) and os.path.getsize(path) > 0
