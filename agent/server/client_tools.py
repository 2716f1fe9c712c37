"""The tools a client declares: told to the model as harmony namespaces, run by the client.

A request's function tools go in the developer message's `functions` namespace (Codex's
`namespace` tools in namespaces of their own, which harmony renders natively). The model calls
them as `functions.NAME` or `NAMESPACE.NAME`; the server never runs them: the response ends
with the call, and the client's next request carries the output.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openai_harmony import ToolDescription, ToolNamespaceConfig

from harmony_agent.tools.function_schema import _inline_refs, harmony_parameters

from .errors import bad_request

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What OpenAI allows as a function name; nothing of it can break a harmony header."""
WEB_SEARCH = frozenset(
    {"web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26"}
)
"""The Responses API's types for its web search tool: the browser here."""
RESERVED = frozenset({"functions", "python", "browser", "assistant", "container"})
"""Namespaces harmony or the built-in tools already use."""


@dataclass(frozen=True)
class ClientFunction:
    name: str
    namespace: str | None = None
    """The client's namespace (a Codex `namespace` tool), None for a plain function."""

    @property
    def recipient(self) -> str:
        return f"{self.namespace or 'functions'}.{self.name}"


@dataclass
class ClientTools:
    """The client's functions, by the recipient the model addresses."""

    functions: list[ToolDescription] = field(default_factory=list)
    namespaces: list[ToolNamespaceConfig] = field(default_factory=list)
    by_recipient: dict[str, ClientFunction] = field(default_factory=dict)

    def add(self, where: str, spec: Mapping[str, Any], namespace: str | None = None) -> None:
        function = ClientFunction(_name(f"{where}.name", spec.get("name")), namespace)
        if function.recipient in self.by_recipient:
            raise bad_request(f"{where}.name", f"two tools are named {function.recipient!r}")
        self.by_recipient[function.recipient] = function
        description = _optional_text(f"{where}.description", spec.get("description"))
        parameters = _parameters(f"{where}.parameters", spec.get("parameters"))
        tool = ToolDescription.new(function.name, description or "", parameters=parameters)
        if namespace is None:
            self.functions.append(tool)
        else:
            self.namespaces[-1].tools.append(tool)

    def add_namespace(self, where: str, spec: Mapping[str, Any]) -> None:
        name = _name(f"{where}.name", spec.get("name"))
        if name in RESERVED or any(ns.name == name for ns in self.namespaces):
            raise bad_request(f"{where}.name", f"the namespace name {name!r} is taken")
        description = _optional_text(f"{where}.description", spec.get("description"))
        tools = spec.get("tools")
        if not isinstance(tools, list):
            raise bad_request(f"{where}.tools", "expected a list of function tools")
        self.namespaces.append(ToolNamespaceConfig(name=name, description=description, tools=[]))
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                raise bad_request(f"{where}.tools[{i}]", "expected a function tool")
            self.add(f"{where}.tools[{i}]", tool, namespace=name)

    def resolve(self, recipient: str) -> ClientFunction | None:
        """The function a recipient the model wrote stands for. Models also write a bare
        `NAME` and `functions.NAMESPACE.NAME`: those are the client's calls too."""
        recipient = recipient.strip()
        for candidate in (
            recipient,
            f"functions.{recipient}",
            recipient.removeprefix("functions."),
        ):
            if (found := self.by_recipient.get(candidate)) is not None:
                return found
        return None

    def clash(self, names: Sequence[str]) -> str | None:
        """The first of the server's own function names a client function also has."""
        return next((n for n in names if f"functions.{n}" in self.by_recipient), None)


def tool_choice_of(value: Any, client: ClientTools, builtins: frozenset[str]) -> str:
    """A request's `tool_choice` as `Agent.tool_choice`: "auto", "required" or the recipient
    the model must call. Both APIs' forms: a function named as `{"type": "function", "name"}`
    (Responses) or `{"type": "function", "function": {"name"}}` (Chat Completions), `allowed_tools`
    (its mode; the model still sees every declared tool), and the built-in tools by type."""
    if value is None or value in ("auto", "none"):  # "none": the caller declared no tools
        return "auto"
    if isinstance(value, dict):
        kind = value.get("type")
        if not isinstance(kind, str):
            raise bad_request("tool_choice.type", "expected a string")
        if kind == "function":
            function = value.get("function", value)
            name = function.get("name") if isinstance(function, dict) else None
            where = "tool_choice.function.name" if "function" in value else "tool_choice.name"
            found = client.resolve(name) if isinstance(name, str) else None
            if found is None:
                raise bad_request(where, f"no function tool named {name!r} was given in tools")
            return found.recipient
        if kind == "allowed_tools":
            allowed = value.get("allowed_tools", value)
            value = allowed.get("mode", "auto") if isinstance(allowed, dict) else None
        elif kind == "code_interpreter" and "python" in builtins:
            return "python"
        elif kind in WEB_SEARCH and "browser" in builtins:
            return "browser.search"
        else:
            raise bad_request("tool_choice.type", f"no tool of type {kind!r} is available")
    if value == "auto":
        return "auto"
    if value != "required":
        raise bad_request("tool_choice", "expected 'none', 'auto', 'required' or a tool")
    if not (client.by_recipient or builtins):
        raise bad_request("tool_choice", "'required' needs at least one tool in tools")
    return "required"


def _name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise bad_request(where, "a tool name is 1 to 64 letters, digits, '_' or '-'")
    return value


def _optional_text(where: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise bad_request(where, "expected a string")
    return value


def _parameters(where: str, value: Any) -> dict[str, Any] | None:
    """The schema as harmony renders it: `$ref`s inlined, unions as TypeScript unions."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(where, "expected a JSON schema object")
    schema = copy.deepcopy(value)
    try:
        schema = _inline_refs(schema)
    except (KeyError, TypeError, AttributeError):  # a dangling or recursive $ref: shown as-is
        schema = copy.deepcopy(value)
    try:
        rendered = harmony_parameters(schema)
    except (AttributeError, TypeError, IndexError):
        raise bad_request(where, "not a JSON schema harmony can describe") from None
    return rendered if isinstance(rendered, dict) else None
