"""MCP (Model Context Protocol) both ways: other servers' tools for our agent, our tools for others.

- `client`: `MCPServer`, a server's tools as the model's developer functions;
- `config`: the `mcpServers` file (`~/.config/harmony-agent/mcp.json`) and `--mcp NAME=...`;
- `serve`: the sandboxed python and the browser served over stdio or streamable HTTP.

The `mcp` SDK is imported only once a server starts: importing this package is cheap.
"""

from .client import MCPServer, MCPServerError, start_all
from .config import MCPConfigError, config_path, load_config, server_from_spec

__all__ = [
    "MCPConfigError",
    "MCPServer",
    "MCPServerError",
    "config_path",
    "load_config",
    "server_from_spec",
    "start_all",
]
