"""`MCPServer`: servers written with the real `mcp` SDK (`_mcp_test_server.py`), over stdio and
streamable HTTP, their tools called by scripted turns through the real agent loop."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import live_server

from harmony_agent.agent import Agent, RunResult, ToolResult
from harmony_agent.model import ScriptedModel, harmony_encoding
from harmony_agent.tools import MCPServer, function_tool
from harmony_agent.tools.mcp import MCPConfigError, MCPServerError, load_config, server_from_spec

SERVER = Path(__file__).with_name("_mcp_test_server.py")
FINAL = "<|channel|>final<|message|>Done.<|return|>"


def call(tool: str, arguments: dict[str, object]) -> str:
    return (
        f"<|channel|>commentary to=functions.{tool} <|constrain|>json<|message|>"
        f"{json.dumps(arguments)}<|call|>"
    )


def stdio(name: str = "t", **options: object) -> MCPServer:
    return MCPServer(name, sys.executable, [str(SERVER)], **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    from _mcp_test_server import server

    with live_server(server.streamable_http_app()) as base:
        yield f"{base}/mcp"


def run(
    tools: list[object], *turns: str, **options: object
) -> tuple[list[ToolResult], RunResult, ScriptedModel]:
    model = ScriptedModel([*turns, FINAL])
    with Agent(model, tools=tools, **options) as agent:  # type: ignore[arg-type]
        events = list(agent.stream("Go."))
    results = [e for e in events if isinstance(e, ToolResult)]
    return results, events[-1].result, model  # type: ignore[attr-defined]


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_schemas_reach_the_developer_message_and_a_call_goes_to_the_server_and_back(
    transport: str, http_url: str, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    if transport == "stdio":
        server = stdio(env={"MCP_TEST_STARTED": str(started)})
    else:
        server = MCPServer("t", url=http_url)
    model = ScriptedModel([call("add", {"a": 2, "b": 3}), FINAL])
    agent = Agent(model, tools=[server])
    assert not started.exists()  # making the agent starts no server: its first prompt does
    with agent:
        events = list(agent.stream("2 + 3?"))
    [result] = [e for e in events if isinstance(e, ToolResult)]
    assert (result.call.recipient, result.output, result.is_error) == ("functions.add", "5", False)
    assert events[-1].result.final == "Done."  # type: ignore[attr-defined]
    assert started.exists() == (transport == "stdio")
    developer = harmony_encoding().decode(model.prompts[0])
    assert "namespace functions {" in developer
    assert "// Add two integers." in developer
    assert "type add = (_: {\na: number,\nb: number,\n}) => any;" in developer
    assert "type weather = (_: {\ncity: string,\n}) => any;" in developer
    assert "type calls_so_far = (_: {\n}) => any;" in developer
    assert (
        harmony_encoding()
        .decode(model.prompts[1])
        .endswith(
            "<|start|>functions.add to=assistant<|channel|>commentary<|message|>5<|end|>"
            "<|start|>assistant"
        )
    )


def test_clashing_names_get_the_server_name_as_prefix(http_url: str) -> None:
    @function_tool
    def add(a: int, b: int) -> str:
        """Add, locally."""
        return "local"

    # Two servers (two sessions with one program) with the same tools, and a local `add`.
    tools = [add, MCPServer("one", url=http_url), MCPServer("two", url=http_url)]
    results, _, model = run(
        tools, call("add", {"a": 1, "b": 1}), call("two_add", {"a": 2, "b": 3}),
        call("one_weather", {"city": "Oslo"}),
    )  # fmt: skip
    assert [r.output for r in results[:2]] == ["local", "5"]
    assert json.loads(results[2].output) == {"city": "Oslo", "celsius": 21.5}
    developer = harmony_encoding().decode(model.prompts[0])
    for name in ("add", "one_add", "two_add", "one_weather", "two_weather", "one_crash"):
        assert f"type {name} = " in developer
    assert "type weather = " not in developer


def test_an_async_program_starts_the_server_first_and_runs_on_its_own_loop(http_url: str) -> None:
    async def main() -> str | None:
        server = MCPServer("t", url=http_url)
        await server.astart()  # without blocking this loop; the first prompt then waits for nothing
        model = ScriptedModel([call("add", {"a": 2, "b": 3}), FINAL])
        async with Agent(model, tools=[server]) as agent:
            result = await agent.arun("2 + 3?")
        [tool_message] = [m for m in result.messages if m.author.name == "functions.add"]
        return tool_message.content[0].text  # type: ignore[union-attr]

    assert asyncio.run(main()) == "5"


def test_images_structured_content_and_errors_reach_the_model_as_text(
    http_url: str, tmp_path: Path
) -> None:
    server = MCPServer("t", url=http_url, files_dir=tmp_path / "files")
    picture, weather, fail = run(
        [server], call("picture", {}), call("weather", {"city": "Oslo"}),
        call("fail", {"reason": "no luck"}),
    )[0]  # fmt: skip
    [saved] = (tmp_path / "files").iterdir()
    assert saved.read_bytes().startswith(b"\x89PNG")
    assert picture.output == f"[image saved as {saved} (image/png, {saved.stat().st_size} bytes)]"
    assert json.loads(weather.output) == {"city": "Oslo", "celsius": 21.5}
    assert fail.is_error and "failed on purpose: no luck" in fail.output
    assert not picture.is_error and not weather.is_error


def test_arguments_are_checked_against_the_servers_schema_before_the_call(http_url: str) -> None:
    [result] = run([MCPServer("t", url=http_url)], call("add", {"a": "two", "b": 3}))[0]
    assert result.is_error
    assert "field 'a': expected integer, got string" in result.output


def test_a_slow_tool_times_out_as_a_tool_message_and_the_server_goes_on(http_url: str) -> None:
    server = MCPServer("t", url=http_url, timeout=0.5)
    slow, added = run([server], call("slow", {"seconds": 30}), call("add", {"a": 2, "b": 3}))[0]
    assert slow.is_error
    assert slow.output == "The call to functions.slow timed out after 0.5 seconds."
    assert (added.output, added.is_error) == ("5", False)


def test_a_crashed_server_is_a_tool_message_and_starts_again_at_the_next_call() -> None:
    added, crashed, counted = run(
        [stdio("c")], call("add", {"a": 2, "b": 3}), call("crash", {}), call("calls_so_far", {})
    )[0]
    assert crashed.is_error
    assert crashed.output.startswith("MCP server 'c' has stopped")
    assert 'its stderr says "crashing on purpose"' in crashed.output
    assert "started again at the next call" in crashed.output
    assert (added.output, counted.output) == ("5", "0")  # a new process: its count starts over


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        (["/nonexistent/mcp-server"], "failed to start: no such program: /nonexistent/mcp-server"),
        (
            [sys.executable, "-c", "import sys; sys.exit('cannot read the API key')"],
            'its stderr says "cannot read the API key"',
        ),
        ([sys.executable, "-c", "import time; time.sleep(60)"], "did not start within 1 s"),
    ],
    ids=["missing", "exits", "silent"],
)
def test_a_server_that_cannot_start_is_one_error_at_the_first_prompt(
    command: list[str], problem: str
) -> None:
    server = MCPServer("bad", command[0], command[1:], startup_timeout=1)
    with (
        Agent(ScriptedModel([FINAL]), tools=[server]) as agent,
        pytest.raises(MCPServerError) as error,
    ):
        agent.run("Hi.")
    message = str(error.value)
    assert message.startswith("MCP server 'bad' (")
    assert problem in message and "\n" not in message


def test_configuration_files_and_cli_values(tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "server-filesystem", "/data"],
                  "env": {"ROOT": "/data"}},
        "docs": {"type": "http", "url": "http://127.0.0.1:8123/mcp", "timeout": 5},
        "off": {"command": "old-server", "disabled": True},
    }}))  # fmt: skip
    files, docs = load_config(config)
    assert (files.name, files.command, files.args, files.env) == (
        "files",
        "npx",
        ["-y", "server-filesystem", "/data"],
        {"ROOT": "/data"},
    )
    assert (docs.url, docs.timeout) == ("http://127.0.0.1:8123/mcp", 5)
    spec = server_from_spec("fs=npx -y server-filesystem '/my data'")
    assert (spec.name, spec.command, spec.args) == (
        "fs",
        "npx",
        ["-y", "server-filesystem", "/my data"],
    )
    assert server_from_spec("web=http://127.0.0.1:9/mcp").url == "http://127.0.0.1:9/mcp"
    for bad, problem in [
        ({"mcpServers": {"x": {"command": "a", "url": "http://h/"}}}, "give a command"),
        ({"mcpServers": {"x": {"command": "a", "argz": []}}}, "unknown field 'argz'"),
        ({"mcpServers": {"x": {"type": "sse", "url": "http://h/"}}}, "type 'sse' is not supported"),
        ({"mcpServers": {"a b": {"command": "a"}}}, "use letters, digits"),
        ({"servers": {}}, 'expected {"mcpServers"'),
    ]:
        config.write_text(json.dumps(bad))
        with pytest.raises(MCPConfigError, match=problem):
            load_config(config)
    for spec_text in ["noequals", "x=", "x=npx 'unclosed"]:
        with pytest.raises(MCPConfigError):
            server_from_spec(spec_text)


def test_cli_runs_with_configured_mcp_servers_and_reports_one_that_cannot_start(
    http_url: str, tmp_path: Path
) -> None:
    from _support import cli_env

    (tmp_path / "turns.json").write_text(json.dumps([call("add", {"a": 2, "b": 3}), FINAL]))
    config = tmp_path / "config" / "harmony-agent" / "mcp.json"  # $XDG_CONFIG_HOME of cli_env
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"mcpServers": {"t": {"url": http_url}}}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "harmony_agent", *args], cwd=tmp_path,
                              env=cli_env(tmp_path), capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip

    proc = cli("run", "--scripted", "turns.json", "2 + 3?")  # the configured server
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Done.\n"
    proc = cli(
        "run", "--scripted", "turns.json", "--mcp", "bad=/nonexistent/mcp-server --x", "2+3?"
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        "harmony-agent: error: MCP server 'bad' (/nonexistent/mcp-server --x) failed to start: "
        "no such program: /nonexistent/mcp-server\n"
    )
