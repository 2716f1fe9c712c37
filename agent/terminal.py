"""Showing a run in the terminal as it streams: reasoning dimmed, tools as panels, the answer
as markdown, and a line of figures at the end of each turn."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.spinner import Spinner
from rich.syntax import Syntax
from rich.text import Text

from harmony_agent.model import harmony_encoding

from .events import AgentEvent, ModelProgress, RunDone, ToolCalled, ToolResult
from .result import RunResult

MAX_RESULT_LINES = 12
STATUS_DELAY = 0.25
"""Seconds without output before the status line shows: none flickers between messages."""


def shorten(text: str, max_lines: int = MAX_RESULT_LINES, max_chars: int = 2000) -> str:
    """The start of `text`, with a note of how much was left out."""
    lines = text.strip("\n").splitlines()
    kept = "\n".join(lines[:max_lines])[:max_chars]
    hidden = len(lines) - len(kept.splitlines())
    return kept + (f"\n… {hidden} more lines" if hidden > 0 else "")


def tool_call_view(call: ToolCalled) -> RenderableType:
    """A tool call as a panel: python code highlighted, JSON arguments pretty-printed."""
    recipient, arguments = call.call.recipient, call.call.arguments
    body: RenderableType
    if recipient == "python":
        body = Syntax(arguments.strip("\n"), "python", theme="ansi_dark", line_numbers=False)
    else:
        try:
            body = Syntax(json.dumps(json.loads(arguments), indent=2, ensure_ascii=False), "json",
                          theme="ansi_dark")  # fmt: skip
        except ValueError:
            body = Text(arguments)
    return Panel(body, title=f"→ {recipient}", title_align="left", border_style="cyan",
                 expand=False)  # fmt: skip


def tool_result_view(result: ToolResult) -> RenderableType:
    """A tool's answer, shortened (browser pages run long), red when it is an error."""
    style = "red" if result.is_error else "green"
    return Panel(
        Text(shorten(result.output)),
        title=f"← {result.call.recipient} ({result.seconds:.2f} s)",
        title_align="left",
        border_style=style,
        expand=False,
    )


def raw_output_view(raw: str, *, whole: bool = False) -> Text:
    """Model output that no message holds (invalid, or cut off by a limit), as the model wrote
    it, dimmed; shortened unless `whole`."""
    text = raw if whole else shorten(raw)
    return Text.assemble(("raw model output: ", "dim bold"), (text, "dim"))


class StatusLine:
    """What shows while the model works and nothing else does: the seconds since the turn began
    and the tokens generated so far. It reads the clock as it renders, so a live display keeps it
    current between events (while the model reads a long prompt, say)."""

    def __init__(self) -> None:
        self.started = self.shown = time.monotonic()
        self.tokens = 0
        self._spinner = Spinner("dots", style="dim")

    def __rich__(self) -> RenderableType:
        now = time.monotonic()
        if now - self.shown < STATUS_DELAY:
            return Text()
        text = f"working · {int(now - self.started)} s · {self.tokens} tokens"
        self._spinner.update(text=Text(text, style="dim"))
        return self._spinner


def turn_summary(result: RunResult) -> Text:
    """Tokens, speed and time of a run; its status when it did not complete."""
    u = result.usage
    context = ""
    if u.context_limit and u.steps:
        share = u.context_tokens / u.context_limit
        context = f" · context {u.context_tokens}/{u.context_limit} ({share:.0%})"
    text = Text(
        f"{u.output_tokens} tokens · {u.tokens_per_second:.1f} tok/s · {u.steps} steps · "
        f"{u.tool_calls} tool calls · {u.seconds:.1f} s{context}",
        style="dim",
    )
    if result.status != "completed":
        text = Text.assemble((f"⚠ {result.status}: {result.detail}\n", "yellow"), text)
    return text


class EventView:
    """Renders agent events on a console as they arrive.

    `show_reasoning` streams the chain of thought dimmed; `raw` also prints every message as
    harmony text; `show_final=False` leaves the answer to the caller (e.g. for stdout). The final
    answer streams as live markdown on a terminal and is printed once, as markdown, elsewhere.
    `resolve_citations` rewrites the answer's citations before display. On a terminal a status
    line shows while the model works with nothing to show. Output the model left unparsed
    (`RunResult.raw`) is printed dimmed at the end, whole when `raw`. Use it as a context manager,
    or call `close()`, so that an interrupted run leaves no live display behind.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        show_reasoning: bool = True,
        raw: bool = False,
        show_final: bool = True,
        resolve_citations: Callable[[str], str] | None = None,
    ) -> None:
        self.console = console or Console()
        self.show_reasoning = show_reasoning
        self.raw = raw
        self.show_final = show_final
        self.resolve_citations = resolve_citations or (lambda text: text)
        self._final = ""
        self._live: Live | None = None
        self._at_line_start = True
        self._line: StatusLine | None = None  # the run being shown
        self._status_live: Live | None = None
        self._streaming = False
        """Text of the message being generated is on screen: no status line under it."""

    def __enter__(self) -> EventView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, event: AgentEvent) -> None:
        if self._line is None:  # the first event of a run
            self._line = StatusLine()
        handler = getattr(self, "_on_" + event.type.replace(".", "_"), None)
        if handler is not None:
            handler(event)

    def close(self) -> None:
        """Stop the live displays (status line, streaming answer) an interrupted run left open."""
        self._hide_status()
        if self._live is not None:
            self._live.stop()
            self._live = None
        self._final = ""
        self._line = None
        self._streaming = False

    def _hide_status(self) -> None:
        if self._status_live is not None:
            self._status_live.stop()  # transient: the line is erased
            self._status_live = None

    def _write(self, text: str, style: str) -> None:
        self._hide_status()
        self._streaming = True
        self.console.print(text, style=style, end="", highlight=False, markup=False)
        self._at_line_start = text.endswith("\n")

    def _on_model_progress(self, event: ModelProgress) -> None:
        assert self._line is not None
        self._line.tokens = event.tokens
        if self._status_live is not None or self._streaming or self._live is not None:
            return
        if not self.console.is_terminal or self.console.is_dumb_terminal:
            return
        self._newline()
        self._line.shown = time.monotonic()
        # Only a stdout console takes over stdout: `run` keeps it for the answer.
        self._status_live = Live(
            self._line,
            console=self.console,
            transient=True,
            refresh_per_second=8,
            redirect_stdout=not self.console.stderr,
        )
        self._status_live.start()

    def _newline(self) -> None:
        if not self._at_line_start:
            self.console.print()
            self._at_line_start = True

    def _on_reasoning_delta(self, event: Any) -> None:
        if self.show_reasoning:
            self._write(event.text, "dim")

    def _on_commentary_delta(self, event: Any) -> None:
        self._write(event.text, "italic")

    def _on_tool_call(self, event: ToolCalled) -> None:
        self._hide_status()
        self._newline()
        self.console.print(tool_call_view(event))

    def _on_tool_result(self, event: ToolResult) -> None:
        self._hide_status()
        self.console.print(tool_result_view(event))

    def _on_final_delta(self, event: Any) -> None:
        if not self.show_final:
            return
        self._hide_status()
        self._streaming = True
        self._newline()
        self._final += event.text
        if not self.console.is_terminal:
            return  # printed whole when the message completes
        if self._live is None:
            self._live = Live(console=self.console, refresh_per_second=8,
                              vertical_overflow="visible")  # fmt: skip
            self._live.start()
        self._live.update(Markdown(self._final))

    def _on_message(self, event: Any) -> None:
        self._hide_status()
        self._streaming = False
        message = event.message
        if self.raw:
            encoding = harmony_encoding()
            self._newline()
            self.console.print(encoding.decode(encoding.render(message)), style="magenta",
                               markup=False, highlight=False)  # fmt: skip
        if self._final:  # the message the final deltas belonged to is complete
            answer = Markdown(self.resolve_citations(self._final))
            if self._live is not None:
                self._live.update(answer)
                self._live.stop()
                self._live = None
            else:
                self.console.print(answer)
            self._final = ""
        else:
            self._newline()

    def _on_done(self, event: RunDone) -> None:
        self.close()
        self._newline()
        if event.result.raw is not None:
            self.console.print(raw_output_view(event.result.raw, whole=self.raw), soft_wrap=True)
        self.console.print(turn_summary(event.result))
