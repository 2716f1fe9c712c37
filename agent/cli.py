"""The `harmony-agent` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from harmony_agent.model import EncodingError, Sampling, ScriptedModel, ScriptExhausted
from harmony_agent.tools import FunctionTool, ToolGroup
from harmony_agent.tools.browser.search import SEARCH_ENV, SEARCH_SERVICES
from harmony_agent.tools.plugins import PluginError, installed_plugins, load_reference

from .agent import Agent
from .batch import BatchError
from .terminal import EventView
from .toolbox import Tool
from .transcript import TranscriptError

MODEL_ENV = "HARMONY_AGENT_MODEL"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNFINISHED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_BROKEN_PIPE = 141  # as a shell reports a writer that SIGPIPE ended
EPILOG = f"""exit codes: {EXIT_OK} answered, {EXIT_ERROR} error (bad model path, tool, input),
{EXIT_USAGE} bad command line, {EXIT_UNFINISHED} run ended without an answer (a limit, invalid
model output), {EXIT_INTERRUPTED} interrupted"""


class CliError(Exception):
    """A user mistake, reported as one line."""


_LOADED_ONLY = {
    "harmony_agent.model.checkpoint": "CheckpointError",  # imports torch: seconds
    "harmony_agent.model.remote": "RemoteEngineError",
    "harmony_agent.tools.mcp": "MCPServerError",
}
"""Errors of modules that raise them only once imported: looked up, never imported for it."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from harmony_agent.tools import SandboxUnavailable

    errors: list[type[BaseException]] = [
        SandboxUnavailable,
        CliError,
        ValueError,  # e.g. a conversation longer than the model's context
        PluginError,
        TranscriptError,
        EncodingError,
        BatchError,
        OSError,
        ScriptExhausted,
    ]
    for module, name in _LOADED_ONLY.items():
        if (loaded := sys.modules.get(module)) is not None:
            errors.append(getattr(loaded, name))
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    # Idle OpenMP workers otherwise spin and starve the decoding thread on a busy CPU (4x slower
    # decode measured here); it only takes effect before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except BrokenPipeError:
        # The reader left (`... | head`): stop quietly. Later writes, and the flush at exit, go
        # to /dev/null instead of raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("harmony-agent: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _user_errors() as e:
        print(f"harmony-agent: error: {e}", file=sys.stderr)
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harmony-agent",
        description="Run OpenAI's gpt-oss models as agents on your own hardware.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run one task and print the answer",
        epilog=EPILOG,
        description="Run one task. The answer goes to stdout; reasoning, tool calls and the "
        "run's status go to stderr.",
    )
    run.add_argument(
        "task",
        nargs="?",
        help="what to do; - (or nothing, with input piped in) reads stdin",
    )
    _add_agent_options(run)
    run.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document: final answer, status, messages, usage (with --batch: "
        "the batch's summary, its counts by status and each task's id and status)",
    )
    run.add_argument(
        "--transcript",
        metavar="FILE",
        help="append the conversation to this JSONL transcript as it happens",
    )
    run.add_argument(
        "--continue",
        dest="resume",
        metavar="FILE",
        help="continue the conversation saved in this transcript",
    )
    run.add_argument("--quiet", action="store_true", help="print only the answer")
    run.add_argument(
        "--batch",
        metavar="TASKS",
        help='run every task of a JSONL file (lines {"id": ..., "task": "..."} or strings), each '
        "as a new conversation; every attempt appends a result line to --output, and a task's "
        "last line is its result: a rerun runs the tasks without one and retries those that did "
        f"not complete. Exit {EXIT_OK} when every task completed, {EXIT_ERROR} when one failed "
        f"with an error (the batch stops there), else {EXIT_UNFINISHED}",
    )
    run.add_argument(
        "--output",
        metavar="FILE",
        help="where --batch appends results (default: TASKS.results.jsonl)",
    )
    run.add_argument(
        "--concurrency",
        type=_positive_int,
        default=1,
        metavar="N",
        help="with --batch, run N tasks at once on the one model: their tokens decode together "
        "(default: 1)",
    )
    run.add_argument(
        "--no-retry",
        dest="retry",
        action="store_false",
        help="with --batch, run only the tasks without a result; keep the ones that did not "
        "complete as they are",
    )
    run.set_defaults(handler=_run)

    chat = commands.add_parser(
        "chat",
        help="talk with the agent in the terminal",
        description="An interactive conversation; /help inside lists the commands.",
    )
    _add_agent_options(chat)
    chat.add_argument(
        "--transcript",
        metavar="FILE",
        help="keep the conversation in this JSONL transcript (continued if it exists)",
    )
    chat.set_defaults(handler=_chat)

    listing = commands.add_parser("tools", help="list the tools an agent would get")
    listing.add_argument(
        "--tools",
        dest="tool_refs",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="also load these tools",
    )
    _add_mcp_options(listing)
    listing.set_defaults(handler=_list_tools)
    _add_mcp_command(commands)

    from .server.cli import add_serve_command

    add_serve_command(commands)

    try:
        from harmony_agent.model.cli import add_model_commands
        from harmony_agent.model.train.cli import add_finetune_command
    except ModuleNotFoundError as e:  # without torch there are no model utilities
        if e.name != "torch":
            raise
    else:
        add_model_commands(commands)
        add_finetune_command(commands)

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh, fish)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Print a completion script for commands, options and file names. Install it:
  bash  harmony-agent completion bash > ~/.local/share/bash-completion/completions/harmony-agent
        (or add `source <(harmony-agent completion bash)` to ~/.bashrc)
  zsh   harmony-agent completion zsh > ~/.zfunc/_harmony-agent
        (with `fpath+=~/.zfunc; autoload -Uz compinit; compinit` in ~/.zshrc)
  fish  harmony-agent completion fish > ~/.config/fish/completions/harmony-agent.fish""",
    )
    completion.add_argument("shell", choices=["bash", "zsh", "fish"], help="your shell")
    completion.set_defaults(handler=_completion)
    return parser


def _stdin_is_piped() -> bool:
    """Input from a pipe or a file (`echo task | harmony-agent run`), not a terminal or none."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, OSError, ValueError):  # no stdin at all
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("harmony-agent")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _add_agent_options(parser: argparse.ArgumentParser, *, terminal: bool = True) -> None:
    """The options that make an agent; `terminal`: also those of showing a run (not `serve`)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        metavar="PATH",
        help="gpt-oss checkpoint folder, .gguf file, or the http:// URL of a model served by "
        f"--engine (default: ${MODEL_ENV})",
    )
    parser.add_argument(
        "--engine",
        choices=["llamacpp", "vllm", "sglang"],
        help="what serves --model URL: llama.cpp's llama-server, vLLM or SGLang (token ids in "
        "and out; harmony stays here)",
    )
    source.add_argument(
        "--scripted",
        metavar="FILE",
        help="replay scripted harmony completions instead of a model (a JSON list of strings, "
        "or one JSON string per line): for testing tools",
    )
    parser.add_argument(
        "--tools",
        dest="tool_refs",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="add tools from a module (repeatable)",
    )
    parser.add_argument(
        "--no-plugins", action="store_true", help="do not load tools from installed plugins"
    )
    parser.add_argument(
        "--python",
        action="store_true",
        help="let the model run Python in a sandboxed Jupyter kernel (needs bubblewrap)",
    )
    parser.add_argument(
        "--dangerously-run-python-unsandboxed",
        dest="python_unsandboxed",
        action="store_true",
        help="with --python, where the sandbox is unavailable, run the model's code as an "
        "ordinary process with all your rights",
    )
    browser = parser.add_argument_group(
        "browser",
        "--browser searches with DuckDuckGo (no key needed) unless --search or "
        f"${SEARCH_ENV} names a service, or one is configured: $SEARXNG_URL (SearXNG), "
        "$EXA_API_KEY (Exa), $YDC_API_KEY (You.com).",
    )
    browser.add_argument(
        "--browser",
        action="store_true",
        help="let the model search the web and open public pages in Chromium",
    )
    _add_browser_service_options(browser)
    _add_mcp_options(parser)
    parser.add_argument("--instructions", help="developer instructions")
    parser.add_argument(
        "--effort",
        choices=["low", "medium", "high"],
        default="medium",
        help="reasoning effort (default: medium)",
    )
    parser.add_argument(
        "--max-tokens",
        type=_positive_int,
        metavar="N",
        help="stop after the model has generated N tokens in all",
    )
    parser.add_argument(
        "--max-steps",
        type=_positive_int,
        default=32,
        metavar="N",
        help="at most N model calls (default: 32)",
    )
    parser.add_argument("--temperature", type=float, help="(default: 1.0; 0 for the demo model)")
    parser.add_argument("--top-p", type=float, default=1.0, help="(default: 1.0)")
    parser.add_argument("--seed", type=int, help="seed for reproducible sampling")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if present)")
    parser.add_argument(
        "--backend",
        choices=["torch", "triton"],
        help="model kernels (default: triton on a CUDA device when installed, else torch)",
    )
    parser.add_argument(
        "--context",
        type=_positive_int,
        metavar="N",
        help="tokens the KV cache holds: the longest conversation (default: 32768 on a GPU, "
        "8192 on the CPU)",
    )
    parser.add_argument(
        "--no-cuda-graph",
        dest="cuda_graph",
        action="store_false",
        default=None,
        help="launch each decode step's kernels one by one (triton backend)",
    )
    if terminal:
        parser.add_argument(
            "--hide-reasoning",
            dest="reasoning",
            action="store_false",
            help="do not show the model's reasoning",
        )


def _add_browser_service_options(browser: argparse._ArgumentGroup) -> None:
    browser.add_argument(
        "--search",
        choices=SEARCH_SERVICES,
        help="search service for --browser: duckduckgo needs no key, exa $EXA_API_KEY, you "
        "$YDC_API_KEY, searxng --searxng-url",
    )
    browser.add_argument(
        "--searxng-url",
        metavar="URL",
        help="a SearXNG instance to search with, its JSON format enabled (default: $SEARXNG_URL)",
    )
    browser.add_argument(
        "--browser-allow",
        action="append",
        default=[],
        type=_host_port,
        metavar="HOST[:PORT]",
        help="also open pages on HOST (any port unless :PORT is given), which the browser "
        "refuses by default when it has a private or loopback address (repeatable)",
    )


def _add_mcp_options(parser: argparse.ArgumentParser) -> None:
    from harmony_agent.tools.mcp import config_path

    mcp = parser.add_argument_group(
        "MCP servers",
        "Their tools reach the model as functions.TOOL (functions.NAME_TOOL where two tools "
        f"share a name). Servers configured in {_home_relative(config_path())} (an "
        '"mcpServers" object, as other MCP hosts use) start too.',
    )
    mcp.add_argument(
        "--mcp",
        dest="mcp_specs",
        action="append",
        default=[],
        metavar="NAME=COMMAND|URL",
        help="use an MCP server: NAME=http(s)://... (streamable HTTP) or NAME='COMMAND ARGS...' "
        "(stdio; split as the shell splits, so quote the whole value); repeatable",
    )
    mcp.add_argument(
        "--mcp-config",
        metavar="FILE",
        help="read MCP servers from FILE instead of the default configuration",
    )
    mcp.add_argument(
        "--no-mcp-config",
        action="store_true",
        help="start no servers from the MCP configuration, only those given with --mcp",
    )


def _add_mcp_command(commands: Any) -> None:
    mcp = commands.add_parser(
        "mcp",
        help="serve the sandboxed python or the browser to other agents over MCP",
        description="Serve one of our tools as an MCP server, for Codex, Claude, Cursor and other "
        "MCP hosts: over stdio (the host starts this command) or streamable HTTP (at "
        "http://HOST:PORT/mcp). Each client session gets its own kernel or page stack.",
    )
    served = mcp.add_subparsers(title="tools", required=True, metavar="TOOL")
    python = served.add_parser(
        "python", help="the stateful Python kernel, in the sandbox (needs bubblewrap)"
    )
    python.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="interrupt a call after this long (default: 120)",
    )
    python.add_argument(
        "--dangerously-run-python-unsandboxed",
        dest="python_unsandboxed",
        action="store_true",
        help="where the sandbox is unavailable, run clients' code as an ordinary process with "
        "all your rights",
    )
    browser = served.add_parser(
        "browser",
        help="search, open and find in Chromium, refusing loopback and private addresses",
        description="--search picks the search service as for `run --browser` (default: "
        f"DuckDuckGo, or ${SEARCH_ENV}).",
    )
    _add_browser_service_options(browser.add_argument_group("browser"))
    for parser in (python, browser):
        parser.add_argument(
            "--transport",
            choices=["stdio", "http"],
            default="stdio",
            help="stdio (default), or streamable HTTP at http://HOST:PORT/mcp",
        )
        parser.add_argument(
            "--host",
            default="127.0.0.1",
            help="with http: address to listen on (default: 127.0.0.1)",
        )
        parser.add_argument(
            "--port",
            type=int,
            default=8000,
            help="with http: port to listen on; 0 picks a free one (default: 8000)",
        )
        parser.add_argument(
            "--max-sessions",
            type=_positive_int,
            default=8,
            metavar="N",
            help="client sessions kept at once, each with its own state; the least recently "
            "used idle one is closed to make room (default: 8)",
        )
    python.set_defaults(handler=_mcp_serve, served="python")
    browser.set_defaults(handler=_mcp_serve, served="browser", browser=True)


def _mcp_serve(args: argparse.Namespace) -> int:
    from harmony_agent.tools.mcp.serve import browser_server, python_server, serve

    if args.transport == "stdio" and (args.host != "127.0.0.1" or args.port != 8000):
        raise CliError("--host and --port go with --transport http")
    if args.served == "python":
        server, sessions = python_server(
            args.transport,
            timeout=args.timeout,
            dangerously_allow_unsandboxed=args.python_unsandboxed,
            max_sessions=args.max_sessions,
        )
    else:
        server, sessions = browser_server(
            _browser(args), args.transport, max_sessions=args.max_sessions
        )

    def announce(url: str) -> None:
        print(
            f"harmony-agent: serving {args.served} over MCP at {url}", file=sys.stderr, flush=True
        )

    asyncio.run(serve(server, sessions, args.transport, host=args.host, port=args.port,
                      announce=announce))  # fmt: skip
    return EXIT_OK


def _home_relative(path: Path) -> str:
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _host_port(text: str) -> str:
    from harmony_agent.tools.browser.policy import parse_host_port

    try:
        parse_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _tools(args: argparse.Namespace) -> list[Tool]:
    tools: list[Tool] = []
    if getattr(args, "python", False):
        from harmony_agent.tools import PythonTool

        tools.append(PythonTool(dangerously_allow_unsandboxed=args.python_unsandboxed))
    if getattr(args, "browser", False):
        tools.append(_browser(args))
    elif any(getattr(args, name, None) for name in ("search", "searxng_url", "browser_allow")):
        raise CliError("--search, --searxng-url and --browser-allow set up --browser: add it")
    if not getattr(args, "no_plugins", False):
        for load in installed_plugins().values():
            tools.extend(load())
    for reference in args.tool_refs:
        tools.extend(load_reference(reference))
    # A plugin both installed and named with --tools gives the same objects twice: keep one.
    unique: list[Tool] = []
    for tool in tools:
        if not any(tool is kept for kept in unique):
            unique.append(tool)
    return unique + _mcp_servers(args)


def _mcp_servers(args: argparse.Namespace) -> list[Tool]:
    """The configured servers and those of --mcp (which win over a configured one of the same
    name), started now: a server that cannot start fails before a model loads."""
    from harmony_agent.tools.mcp import load_config, server_from_spec, start_all

    servers = {}
    if not getattr(args, "no_mcp_config", False):
        servers = {s.name: s for s in load_config(getattr(args, "mcp_config", None))}
    elif getattr(args, "mcp_config", None):
        raise CliError("--mcp-config and --no-mcp-config contradict each other: give one")
    for spec in getattr(args, "mcp_specs", ()):
        server = server_from_spec(spec)
        servers[server.name] = server
    start_all(list(servers.values()))
    return list(servers.values())


def _browser(args: argparse.Namespace) -> Tool:
    from harmony_agent.tools import BrowserTool
    from harmony_agent.tools.browser.search import backend_from_env

    try:
        search = backend_from_env(choice=args.search, searxng_url=args.searxng_url)
    except ValueError as e:  # an unknown name in $HARMONY_AGENT_SEARCH
        raise CliError(str(e)) from None
    problem = getattr(search, "problem", None)
    if problem and (args.search or os.environ.get(SEARCH_ENV)):
        # A service the user named but did not set up: say so now, not after loading a model.
        raise CliError(problem)
    return BrowserTool(allow_private_network=args.browser_allow or False, search_backend=search)


def _check_engine(args: argparse.Namespace) -> str | None:
    """--engine, which only a served model (--model URL) takes."""
    from harmony_agent.model.remote import is_url

    engine = getattr(args, "engine", None)
    if engine and not is_url(args.model or os.environ.get(MODEL_ENV, "")):
        raise CliError("--engine names what serves --model URL (an http:// address)")
    return engine


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    engine = _check_engine(args)
    return {
        "device": args.device,
        "backend": args.backend,
        "max_context": args.context,
        "cuda_graph": args.cuda_graph,
        **({"engine": engine} if engine else {}),
    }


def _load_model(args: argparse.Namespace) -> Any:
    if args.scripted:
        return _scripted_model(args.scripted)
    path = args.model or os.environ[MODEL_ENV]
    from harmony_agent.encoding import VOCAB_SIZE
    from harmony_agent.model import load_model
    from harmony_agent.model.checkpoint import CheckpointError

    try:
        model = load_model(path, **_model_options(args))
    except ValueError as e:  # options that do not fit this machine or each other
        raise CliError(str(e)) from None
    except CheckpointError as e:
        raise CliError(
            f"{e} (a gpt-oss checkpoint folder holds config.json and *.safetensors, directly "
            "or under original/, or it is a .gguf file; get one with `huggingface-cli download "
            "openai/gpt-oss-20b --include 'original/*' --local-dir gpt-oss-20b`)"
        ) from None
    config = getattr(model, "config", None)  # a served model checked its vocabulary itself
    if config is not None and config.vocab_size < VOCAB_SIZE:
        raise CliError(
            f"{path}: its vocabulary has {config.vocab_size} tokens, fewer than harmony's "
            f"{VOCAB_SIZE}: it cannot run as an agent"
        )
    return model


def _scripted_model(path: str) -> ScriptedModel:
    """Turns from a JSON list of strings, one JSON string per line, or
    `{"turns": [...], "delay": seconds per token}`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"cannot read scripted turns {path}: {e.strerror}") from None
    try:
        if text.lstrip().startswith(("[", "{")):
            data = json.loads(text)
        else:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise CliError(f"{path}: not JSON ({e})") from None
    turns, delay = (
        (data.get("turns"), data.get("delay", 0.0)) if isinstance(data, dict) else (data, 0.0)
    )
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
        raise CliError(f"{path}: expected harmony completions as JSON strings")
    if not isinstance(delay, int | float) or delay < 0:
        raise CliError(f"{path}: delay must be a number of seconds >= 0")
    return ScriptedModel(turns, delay=float(delay))


def _uses_demo(args: argparse.Namespace) -> bool:
    return not (args.model or args.scripted or os.environ.get(MODEL_ENV))


def _agent(args: argparse.Namespace) -> Agent:
    demo = _uses_demo(args)
    _check_engine(args)  # before the demo model's notice
    temperature = args.temperature if args.temperature is not None else 0.0 if demo else 1.0
    try:
        sampling = Sampling(temperature=temperature, top_p=args.top_p, seed=args.seed)
    except ValueError as e:
        raise CliError(str(e)) from None
    if demo:
        return _demo_agent(args, sampling)
    tools = _tools(args)  # before the model: a bad --tools fails fast
    return Agent(
        _load_model(args),
        tools=tools,
        instructions=args.instructions,
        reasoning_effort=args.effort,
        sampling=sampling,
        max_steps=args.max_steps,
        max_total_tokens=args.max_tokens,
    )


def _demo_agent(args: argparse.Namespace, sampling: Sampling) -> Agent:
    """The built-in demo model, with exactly the prompt it was trained on."""
    from harmony_agent.model.demo import DEMO_CURRENT_DATE, load_demo_model

    if args.tool_refs or args.browser or args.instructions or args.mcp_specs:
        raise CliError(
            "the built-in demo model knows only its own tools and no instructions; drop "
            "--tools/--browser/--mcp/--instructions, or give a gpt-oss checkpoint with --model "
            "PATH"
        )
    print(
        "No model given: using the built-in demo model (a tiny gpt-oss trained for arithmetic and "
        f"unit conversions). For gpt-oss weights use --model PATH or ${MODEL_ENV}.",
        file=sys.stderr,
    )
    try:
        model = load_demo_model(progress=False, **_model_options(args))
    except ValueError as e:
        raise CliError(str(e)) from None
    return Agent(
        model,
        tools=_demo_tools(args),
        reasoning_effort="medium",
        sampling=sampling,
        max_steps=args.max_steps,
        max_turn_tokens=256,
        max_total_tokens=args.max_tokens,
        current_date=DEMO_CURRENT_DATE,
    )


def _demo_tools(args: argparse.Namespace) -> list[Tool]:
    from harmony_agent.model.demo.task import convert_units
    from harmony_agent.tools import PythonTool, function_tool

    return [
        PythonTool(dangerously_allow_unsandboxed=args.python_unsandboxed),
        function_tool(convert_units),
    ]


def _run(args: argparse.Namespace) -> int:
    from .transcript import load_transcript

    if args.batch:
        if args.task or args.resume or args.transcript:
            raise CliError("--batch runs the tasks of its file: give no task, --continue or "
                           "--transcript with it")  # fmt: skip
        return _run_batch(args)
    if args.output or not args.retry or args.concurrency != 1:
        raise CliError("--output, --no-retry and --concurrency go with --batch TASKS")
    if args.task == "-" or (args.task is None and _stdin_is_piped()):
        args.task = sys.stdin.read().strip()
    if not args.task:
        raise CliError('no task given: harmony-agent run "what to do" (or --batch TASKS)')

    history = load_transcript(args.resume) if args.resume else None
    transcript = args.transcript or args.resume
    view = EventView(Console(stderr=True), show_reasoning=args.reasoning, show_final=False)
    with _agent(args) as agent, view:  # closing the view: Ctrl-C leaves no status line behind
        for event in agent.stream(args.task, history=history, transcript=transcript):
            if not (args.quiet or args.json):
                view(event)
        result = event.result  # type: ignore[union-attr]  # the last event is RunDone
        if args.json:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        elif result.final is not None:
            print(_citation_resolver(agent)(result.final))
    return EXIT_OK if result.status == "completed" else EXIT_UNFINISHED


def _run_batch(args: argparse.Namespace) -> int:
    from collections import Counter

    from .batch import ERROR, NOT_RUN, TaskFailed, final_statuses, read_tasks, run_batch, to_run

    tasks = read_tasks(args.batch)
    output = args.output or str(Path(args.batch).with_suffix("")) + ".results.jsonl"
    console = Console(stderr=True, highlight=False)

    def say(text: str) -> None:
        if not args.quiet:
            console.print(text, markup=False, soft_wrap=True)  # one line each, for scripts too

    before = final_statuses(tasks, output)
    todo = to_run(tasks, before, retry=args.retry)
    ran = 0
    failure: Exception | None = None
    interrupted = False
    if todo:  # else the model is not even loaded
        retried = sum(before[t.id] != NOT_RUN for t in todo)
        say(f"running {len(todo)} of {len(tasks)} tasks" + f" ({retried} retried)" * (retried > 0))
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(_agent(args))
            # One model; each concurrent task gets an agent with tools of its own (its kernel).
            agents = [first] + [
                stack.enter_context(
                    dataclasses.replace(
                        first, tools=_demo_tools(args) if _uses_demo(args) else _tools(args)
                    )
                )
                for _ in range(min(args.concurrency, len(todo)) - 1)
            ]
            try:
                for task, result in run_batch(agents, todo, output):
                    ran += 1
                    seconds = result.usage.seconds
                    say(f"[{ran}/{len(todo)}] {task.id}: {result.status} ({seconds:.1f} s)")
            except TaskFailed as e:  # its line says `error`; the error is reported below
                ran += 1
                say(f"[{ran}/{len(todo)}] {e.task.id}: {ERROR}")
                failure = e.error
            except KeyboardInterrupt:  # the tasks running now have no line: a rerun runs them
                interrupted = True
    statuses = final_statuses(tasks, output)
    counts = Counter(statuses.values())
    others = [f", {n} {status}" for status, n in counts.items() if status != "completed"]
    tally = f"{counts['completed']}/{len(tasks)} completed{''.join(others)}"
    verb = "stopped" if interrupted else "done" if todo else "nothing to do"
    again = "; the same command goes on from here" if interrupted else ""
    say(f"{verb}: {tally}; results in {output}{again}")
    if args.json:
        tasks_out = [{"id": task_id, "status": status} for task_id, status in statuses.items()]
        summary = {"results": output, "ran": ran, "counts": dict(counts), "tasks": tasks_out,
                   "interrupted": interrupted}  # fmt: skip
        print(json.dumps(summary, ensure_ascii=False))
    if interrupted:
        return EXIT_INTERRUPTED
    if failure is not None:
        raise failure
    if ERROR in counts:
        return EXIT_ERROR
    return EXIT_OK if counts["completed"] == len(tasks) else EXIT_UNFINISHED


def _chat(args: argparse.Namespace) -> int:
    from .chat import Chat

    with _agent(args) as agent:
        chat = Chat(
            agent,
            show_reasoning=args.reasoning,
            transcript=args.transcript,
            resolve_citations=_citation_resolver(agent),
        )
        with chat.view:  # an error that ends the chat leaves no status line behind
            chat.loop()
    return EXIT_OK


def _citation_resolver(agent: Agent) -> Callable[[str], str]:
    """Turns the browser's `【cursor†Lstart-Lend】` citations into links to the pages cited."""
    browsers = [t for t in agent.tools if t.name == "browser" and hasattr(t, "cite")]
    if not browsers:
        return lambda text: text
    return lambda text: browsers[0].cite(text).text


# Options whose value is a file or folder, by the metavar that says so (or a Path type).
_PATH_METAVARS = {"FILE", "PATH", "DIR", "TASKS", "TRANSCRIPT", "CONFIG"}


def _completion(args: argparse.Namespace) -> int:
    import shtab

    def mark_paths(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    mark_paths(sub)
            elif action.type is Path or action.metavar in _PATH_METAVARS:
                # shtab reads `complete` from the action
                action.complete = shtab.DIRECTORY if action.metavar == "DIR" else shtab.FILE  # type: ignore[attr-defined]

    parser = build_parser()
    mark_paths(parser)
    print(shtab.complete(parser, args.shell))
    return EXIT_OK


def _list_tools(args: argparse.Namespace) -> int:
    from .toolbox import Toolbox

    console = Console(highlight=False)
    tools = _tools(args)
    if not tools:
        console.print("no tools: install a plugin, pass --tools MODULE:ATTR or --mcp NAME=...")
    try:
        toolbox = Toolbox(tools, default_timeout=None)  # the names as the model sees them
        for description in toolbox.functions():
            console.print(f"[bold]functions.{description.name}[/bold]  {description.description}")
            console.print(json.dumps(description.parameters), style="dim", soft_wrap=True)
        for tool in tools:
            if not isinstance(tool, FunctionTool | ToolGroup):
                console.print(f"[bold]{', '.join(tool.recipients())}[/bold]  (built-in namespace)")
    finally:
        for tool in tools:
            if isinstance(tool, ToolGroup):
                asyncio.run(tool.aclose())
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
