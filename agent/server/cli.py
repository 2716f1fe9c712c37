"""`harmony-agent serve`: the OpenAI-compatible server on the command line."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

API_KEY_ENV = "HARMONY_AGENT_API_KEY"


def add_serve_command(commands: Any) -> None:
    """Add `serve` to the CLI's subcommands (`commands` is argparse's subparsers action)."""
    from .. import cli

    serve = commands.add_parser(
        "serve",
        help="serve the model as an OpenAI-compatible API (Responses, Chat Completions)",
        epilog=cli.EPILOG,
        description="Serve the agent over HTTP: POST /v1/responses (Codex CLI), "
        "POST /v1/chat/completions (OpenCode, Kilo Code), GET /v1/models, GET /health. "
        "Clients' function tools run in the client; --python and --browser run here, each "
        "conversation with its own kernel and pages.",
    )
    cli._add_agent_options(serve, terminal=False)
    net = serve.add_argument_group("server")
    net.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1; any other needs --api-key)",
    )
    net.add_argument(
        "--port", type=cli._positive_int, default=8000, help="port to listen on (default: 8000)"
    )
    net.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"the bearer key clients must send (default: ${API_KEY_ENV}; none: no key)",
    )
    net.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="listen on a non-loopback address without a key: anyone who reaches it can run "
        "the model and the server's tools",
    )
    net.add_argument(
        "--model-name",
        metavar="NAME",
        help="the model name clients use (default: the checkpoint folder's name; gpt-oss "
        "with --scripted)",
    )
    net.add_argument(
        "--max-running",
        type=cli._positive_int,
        default=16,
        metavar="N",
        help="responses generated at once, decoded together (default: 16)",
    )
    net.add_argument(
        "--max-waiting",
        type=_count,
        default=64,
        metavar="N",
        help="requests that may wait for a turn; more are refused with 429 (default: 64)",
    )
    net.add_argument(
        "--max-request-mb",
        type=cli._positive_int,
        default=16,
        metavar="MB",
        help="larger request bodies are refused with 413 (default: 16)",
    )
    net.add_argument(
        "--max-stored",
        type=_count,
        default=1000,
        metavar="N",
        help="responses kept for previous_response_id, least recently used dropped (default: 1000)",
    )
    net.add_argument(
        "--max-conversations",
        type=cli._positive_int,
        default=8,
        metavar="N",
        help="conversations whose python kernel and browser stay alive (default: 8)",
    )
    net.add_argument(
        "--log-level",
        choices=["error", "warning", "info", "debug"],
        default="info",
        help="what the server logs to stderr, a line per request at info (default: info)",
    )
    serve.set_defaults(handler=serve_command)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from harmony_agent.model import Sampling

    from .. import cli
    from . import ServerConfig, create_app

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and api_key is None and not args.insecure_no_auth:
        raise cli.CliError(
            f"refusing to listen on {args.host} without an API key: anyone who can reach it "
            f"could run the model and its tools; give --api-key KEY (or ${API_KEY_ENV}), or "
            "--insecure-no-auth"
        )
    model_path = args.model or os.environ.get(cli.MODEL_ENV)
    if not (model_path or args.scripted):
        raise cli.CliError(
            f"serve needs a model: --model PATH (or ${cli.MODEL_ENV}), or --scripted FILE"
        )
    try:
        sampling = Sampling(
            temperature=1.0 if args.temperature is None else args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
    except ValueError as e:
        raise cli.CliError(str(e)) from None
    builtins = _builtin_factories(args)
    tools = cli._tools(_without_builtins(args))
    _check_port(args.host, args.port)
    model = cli._load_model(args)
    name = args.model_name or "gpt-oss"
    if args.model_name is None and model_path and not args.scripted and "://" not in model_path:
        name = Path(model_path).name.removesuffix(".gguf")  # the checkpoint's own name
    config = ServerConfig(
        model,
        model_name=name,
        tools=tools,
        builtins=builtins,
        instructions=args.instructions,
        reasoning_effort=args.effort,
        sampling=sampling,
        max_steps=args.max_steps,
        max_output_tokens=args.max_tokens,
        api_key=api_key,
        max_running=args.max_running,
        max_waiting=args.max_waiting,
        max_request_bytes=args.max_request_mb << 20,
        max_stored=args.max_stored,
        max_tool_sessions=args.max_conversations,
    )
    where = f"http://{args.host}:{args.port}/v1"
    extras = "".join(f", {b}" for b in sorted(builtins))
    print(
        f"harmony-agent: serving {name} at {where} (Responses, Chat Completions{extras})",
        file=sys.stderr,
    )
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level=args.log_level)
    return cli.EXIT_OK


def _builtin_factories(args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    """A factory per built-in tool, each tried once now: a missing sandbox or a search service
    not set up fails at the start, not at a client's first call."""
    from harmony_agent.tools import PythonTool

    from .. import cli

    factories: dict[str, Callable[[], Any]] = {}
    if args.python:
        unsandboxed = args.python_unsandboxed
        factories["python"] = lambda: PythonTool(dangerously_allow_unsandboxed=unsandboxed)
    if args.browser:
        factories["browser"] = lambda: cli._browser(args)
    for make in factories.values():
        make()
    return factories


def _without_builtins(args: argparse.Namespace) -> argparse.Namespace:
    """The options with the built-ins off: the server's other tools, shared by every
    conversation, are what the CLI's tool list gives then."""
    plain = argparse.Namespace(**vars(args))
    plain.python = False
    if args.browser:
        plain.browser, plain.search, plain.searxng_url, plain.browser_allow = False, None, None, []
    return plain


def _check_port(host: str, port: int) -> None:
    from .. import cli

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise cli.CliError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
