"""Structured output: a request's JSON schema told to the model as harmony prescribes.

The harmony guide puts response formats at the end of the developer message: a `# Response
Formats` section, then `## NAME`, a `// description` line and the JSON schema. openai-harmony
0.0.8 has no builder for it, so the section ends the instructions (the end of the message when
the request declares no tools, just before their definitions when it does). Like the guide
says, the prompt steers the model but does not guarantee the schema: nothing constrains
sampling here.
"""

from __future__ import annotations

import json
from typing import Any

from .client_tools import NAME
from .errors import bad_request

JSON_OBJECT = {"type": "object"}


def format_section(value: Any, param: str) -> str | None:
    """The developer message's section for a `response_format` (Chat Completions) or a
    `text.format` (Responses), or None for plain text."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(param, "expected an object with a type")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return _section("json_object", "The answer is one JSON object.", JSON_OBJECT)
    if kind != "json_schema":
        raise bad_request(f"{param}.type", "expected 'text', 'json_object' or 'json_schema'")
    # Chat Completions nests the schema's fields under `json_schema`; Responses does not.
    nested = "json_schema" in value
    spec, where = (value["json_schema"], f"{param}.json_schema") if nested else (value, param)
    if not isinstance(spec, dict):
        raise bad_request(where, "expected an object with a name and a schema")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise bad_request(f"{where}.name", "a format name is 1 to 64 letters, digits, '_' or '-'")
    schema = spec.get("schema", JSON_OBJECT)
    if not isinstance(schema, dict):
        raise bad_request(f"{where}.schema", "expected a JSON schema object")
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise bad_request(f"{where}.description", "expected a string")
    return _section(name, description, schema)


def _section(name: str, description: str | None, schema: dict[str, Any]) -> str:
    lines = ["# Response Formats", "", f"## {name}", ""]
    if description:
        lines += [f"// {line}" for line in description.splitlines()]
    lines.append(json.dumps(schema, separators=(",", ":")))
    return "\n".join(lines)
