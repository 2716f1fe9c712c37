"""The interactive terminal agent: a conversation, commands, and Ctrl-C that stops only the
current answer."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from openai_harmony import Message
from rich.console import Console

from harmony_agent.encoding import cache_dir
from harmony_agent.model import ScriptExhausted

from .agent import Agent
from .conversation import strip_preamble
from .events import RunDone
from .terminal import EventView
from .transcript import TranscriptError, TranscriptWriter, load_transcript

HELP = """\
/effort [low|medium|high]  show or set the reasoning effort
/reasoning                 show or hide the model's reasoning
/raw                       show or hide every message as raw harmony text
/tools                     list the tools the model may call
/reset                     start a new conversation
/save FILE                 save the conversation as a JSONL transcript
/load FILE                 continue a conversation from a transcript
/help                      this help
/quit                      leave (also Ctrl-D)
Ctrl-C stops the answer being generated; the conversation stays as it was before it."""


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
        self.read_line = read_line or _readline_input()
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
        try:
            for event in self.agent.stream(prompt, history=self.history,
                                           transcript=self.transcript):  # fmt: skip
                self.view(event)
                if isinstance(event, RunDone):
                    self.history = event.result.messages
        except KeyboardInterrupt:
            self.view.close()
            self.console.print("\n[yellow]stopped[/yellow] (this turn is not kept)")
        except ScriptExhausted as e:  # the conversation so far stays: /save still works
            self.view.close()
            self.console.print(f"error: {e} (this turn is not kept)", style="red", markup=False)

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
        self.console.print(f"loaded {len(self.history)} messages from {argument}")
        return True

    def _help(self, _: str) -> bool:
        self.console.print(HELP, highlight=False, markup=False)
        return True


def _exists(path: str | None) -> bool:
    return path is not None and os.path.exists(path) and os.path.getsize(path) > 0


def _readline_input() -> Callable[[str], str]:
    """`input` with line editing and a history kept across sessions, where readline exists."""
    try:
        import readline
    except ImportError:  # e.g. Windows without pyreadline
        return input
    history = cache_dir() / "chat_history"
    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        if history.exists():
            readline.read_history_file(history)
    except OSError:
        return input

    def read(prompt: str) -> str:
        line = input(prompt)
        if line.strip():
            with contextlib.suppress(OSError):  # a read-only home must not end the chat
                readline.write_history_file(history)
        return line

    return read
