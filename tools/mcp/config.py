"""Where MCP servers are configured: `~/.config/harmony-agent/mcp.json` and `--mcp NAME=...`.

The file has the shape other MCP hosts use (Claude Desktop, Cursor):

    {"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "."]},
        "docs": {"url": "http://127.0.0.1:8000/mcp", "headers": {"Authorization": "Bearer ..."}},
        "old": {"command": "old-server", "disabled": true}
    }}

Stdio entries take `command`, `args`, `env`, `cwd`; HTTP entries `url` and `headers`; either may
set `timeout` and `startup_timeout` (seconds). `"type"` is accepted as `stdio`, `http` or
`streamable-http`.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from .client import MCPServer

CONFIG_NAME = "mcp.json"
_FIELDS = {
    "command", "args", "env", "cwd", "url", "headers", "timeout", "startup_timeout", "type",
    "disabled", "description",
}  # fmt: skip


class MCPConfigError(ValueError):
    """A configuration file or `--mcp` value that cannot be used; the message says why."""


def config_path() -> Path:
    """`$XDG_CONFIG_HOME/harmony-agent/mcp.json`, by default under `~/.config`."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "harmony-agent" / CONFIG_NAME


def load_config(path: str | os.PathLike[str] | None = None) -> list[MCPServer]:
    """The servers a configuration file names (not started). The default file may be missing;
    a file named explicitly must exist."""
    file = Path(path) if path is not None else config_path()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        if path is None:
            return []
        raise MCPConfigError(f"MCP configuration {file}: no such file") from None
    except OSError as e:
        raise MCPConfigError(f"MCP configuration {file}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MCPConfigError(f"MCP configuration {file}: not JSON ({e})") from None
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise MCPConfigError(f'MCP configuration {file}: expected {{"mcpServers": {{...}}}}')
    return [
        server_from_entry(name, entry, f"{file}: server {name!r}")
        for name, entry in servers.items()
        if not (isinstance(entry, dict) and entry.get("disabled") is True)
    ]


def server_from_entry(name: str, entry: Any, where: str) -> MCPServer:
    """One `mcpServers` entry as an `MCPServer`."""
    if not isinstance(entry, dict):
        raise MCPConfigError(f"{where}: expected an object with a command or a url")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise MCPConfigError(f"{where}: unknown field {', '.join(map(repr, unknown))}")
    kind = entry.get("type", "http" if "url" in entry else "stdio")
    if kind not in ("stdio", "http", "streamable-http"):
        raise MCPConfigError(
            f"{where}: type {kind!r} is not supported (stdio, or streamable HTTP as http)"
        )
    for key, wanted in (
        ("command", str), ("url", str), ("cwd", str), ("args", list), ("env", dict),
        ("headers", dict), ("timeout", (int, float)), ("startup_timeout", (int, float)),
    ):  # fmt: skip
        if key in entry and not isinstance(entry[key], wanted):
            raise MCPConfigError(f"{where}: {key} has the wrong type")
    for key in ("args", "env", "headers"):
        values = entry.get(key) or ()
        items = values.values() if isinstance(values, dict) else values
        if not all(isinstance(v, str) for v in items):
            raise MCPConfigError(f"{where}: every value in {key} must be a string")
    options: dict[str, Any] = {
        key: entry[key] for key in ("env", "cwd", "headers", "timeout") if key in entry
    }
    if "startup_timeout" in entry:
        options["startup_timeout"] = float(entry["startup_timeout"])
    try:
        return MCPServer(
            name, entry.get("command"), entry.get("args", ()), url=entry.get("url"), **options
        )
    except ValueError as e:
        raise MCPConfigError(f"{where}: {e}") from None


def server_from_spec(spec: str) -> MCPServer:
    """`NAME=URL` (streamable HTTP) or `NAME=COMMAND ARGS...` (stdio; split as a shell would,
    so quote arguments holding spaces)."""
    name, sep, value = spec.partition("=")
    if not sep or not name or not value.strip():
        raise MCPConfigError(
            f"--mcp {spec!r}: expected NAME=COMMAND [ARGS...] or NAME=http(s)://HOST/PATH"
        )
    value = value.strip()
    try:
        if value.startswith(("http://", "https://")):
            return MCPServer(name, url=value)
        try:
            words = shlex.split(value)
        except ValueError as e:  # an unclosed quote
            raise MCPConfigError(f"--mcp {spec!r}: {e}") from None
        return MCPServer(name, words[0], words[1:])
    except MCPConfigError:
        raise
    except ValueError as e:
        raise MCPConfigError(f"--mcp {spec!r}: {e}") from None
