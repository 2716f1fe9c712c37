"""Tool plugins: entry points of installed packages and `module:attr` references."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from harmony_agent.agent import Agent
from harmony_agent.model import ScriptedModel
from harmony_agent.tools import BuiltinTool, FunctionTool
from harmony_agent.tools.plugins import PluginError, installed_plugins, load_reference

MODULE = textwrap.dedent(
    '''
    from openai_harmony import ToolNamespaceConfig
    from harmony_agent.tools import BuiltinTool, function_tool

    @function_tool
    def shout(text: str) -> str:
        """Shout text."""
        return text.upper()

    def whisper(text: str) -> str:
        """Whisper text."""
        return text.lower()

    class Clock(BuiltinTool):
        name = "clock"

        def namespace_config(self):
            return ToolNamespaceConfig(name="clock", description="Tells the time.", tools=[])

        async def call(self, call):
            return "noon"

    TOOLS = [shout, whisper, Clock]
    NOT_A_TOOL = 42
    '''
)


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed plugin package: a module plus the dist-info that pip would write."""
    (tmp_path / "loud_tools.py").write_text(MODULE)
    info = tmp_path / "loud_tools-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: loud-tools\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[harmony_agent.tools]\nloud = loud_tools:TOOLS\nbroken = loud_tools:NOT_A_TOOL\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("loud_tools", None)


def test_reference_loads_tools_of_every_kind(plugin_path: Path) -> None:
    shout, whisper, clock = load_reference("loud_tools:TOOLS")
    assert isinstance(shout, FunctionTool) and shout.name == "shout"
    assert isinstance(whisper, FunctionTool) and whisper.description == "Whisper text."
    assert isinstance(clock, BuiltinTool) and clock.recipients() == ["clock"]
    result = Agent(
        ScriptedModel(
            [
                '<|channel|>commentary to=functions.whisper<|message|>{"text": "HI"}<|call|>',
                "<|channel|>analysis to=clock<|message|><|call|>",
                "<|channel|>final<|message|>done<|return|>",
            ]
        ),
        tools=[shout, whisper, clock],
    ).run("go")
    assert ["".join(c.text for c in m.content) for m in result.messages[2::2]] == ["hi", "noon"]


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("loud_tools", "expected 'module:attribute'"),
        ("no_such_module:x", "cannot import 'no_such_module'"),
        ("loud_tools:missing", "has no attribute 'missing'"),
        ("loud_tools:NOT_A_TOOL", r"loud_tools:NOT_A_TOOL is not a tool \(got int\)"),
    ],
)
def test_bad_references(plugin_path: Path, reference: str, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        load_reference(reference)


def test_installed_plugins_are_discovered(plugin_path: Path) -> None:
    plugins = installed_plugins()
    assert [t.name for t in plugins["loud"]()] == ["shout", "whisper", "clock"]
    with pytest.raises(PluginError, match=r"plugin 'broken' .* is not a tool \(got int\)"):
        plugins["broken"]()
