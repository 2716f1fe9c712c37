"""Developer function tools: typed Python functions the model calls with JSON arguments."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, overload

from jsonschema import Draft202012Validator, ValidationError
from openai_harmony import ToolDescription
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import ErrorDetails

from .base import ToolError
from .function_schema import function_schema, harmony_parameters
from .run_context import RunContext

_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


@dataclass
class FunctionTool:
    """A function in the developer message's `functions` namespace, called as `functions.NAME`."""

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema of the arguments object; arguments are validated against it before the call."""
    on_invoke: Callable[..., Awaitable[Any]]
    """Runs the function with validated arguments: `on_invoke(args)`, or `on_invoke(args,
    run_context)` when `takes_context`."""
    timeout: float | None = None
    """Seconds before the model is told the call timed out; None uses the agent's `tool_timeout`."""
    takes_context: bool = False
    """Whether `on_invoke` wants the `RunContext` of the call."""
    _validator: Draft202012Validator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        Draft202012Validator.check_schema(self.parameters)
        self._validator = Draft202012Validator(self.parameters)

    @property
    def recipient(self) -> str:
        return f"functions.{self.name}"

    def tool_description(self) -> ToolDescription:
        """The function as the developer message declares it."""
        return ToolDescription.new(
            self.name, self.description, parameters=harmony_parameters(self.parameters)
        )

    def parse_arguments(self, arguments: str) -> dict[str, Any]:
        """The JSON arguments as a dict, or a `ToolError` telling the model what to fix."""
        text = arguments.strip()
        try:
            args = json.loads(text) if text else {}
        except json.JSONDecodeError as e:
            raise ToolError(
                f"Invalid JSON in the arguments for {self.recipient}: {e.msg} at line {e.lineno} "
                f"column {e.colno}. Send the arguments as one JSON object."
            ) from None
        if not isinstance(args, dict):
            raise ToolError(
                f"The arguments for {self.recipient} must be a JSON object, got "
                f"{_json_type(args)} {_short(args)}."
            )
        errors = sorted(self._validator.iter_errors(args), key=lambda e: list(e.absolute_path))
        if errors:
            raise invalid_arguments(self.recipient, [_explain(e) for e in errors])
        return args

    async def invoke(self, arguments: str, context: RunContext[Any] | None = None) -> str:
        """Validate `arguments`, run the function, and return its result as text."""
        args = self.parse_arguments(arguments)
        if not self.takes_context:
            return format_result(await self.on_invoke(args))
        if context is None:
            context = RunContext(None, (), self.recipient)
        return format_result(await self.on_invoke(args, context))


def format_result(result: Any) -> str:
    """What the model sees of a return value: strings as they are, everything else as JSON."""
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        result = dataclasses.asdict(result)
    try:
        return json.dumps(result, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError):
        return str(result)


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def invalid_arguments(recipient: str, problems: list[str]) -> ToolError:
    """The error the model reads for arguments that failed validation, one problem a line."""
    lines = "\n".join(f"- {p}" for p in problems[:8])
    more = f"\n- ... and {len(problems) - 8} more" if len(problems) > 8 else ""
    return ToolError(f"Invalid arguments for {recipient}:\n{lines}{more}")


def _location(parts: Iterable[str | int]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _explain_pydantic(error: ErrorDetails) -> str:
    """A pydantic error (a custom validator's, say) in the words `_explain` uses."""
    where = _location(error["loc"])
    field_name = f"field '{where}'" if where else "the arguments"
    # "Value error, x must be positive": the prefix names pydantic's exception class, not the field.
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"{field_name}: {message}"


def _explain(error: ValidationError) -> str:
    """One line naming the field, what was expected and what was given."""
    where = _location(error.absolute_path)
    field_name = f"field '{where}'" if where else "the arguments"
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return (
            f"{field_name}: expected {expected}, got {_json_type(error.instance)} "
            f"{_short(error.instance)}"
        )
    if error.validator == "required":
        missing = [r for r in error.validator_value if r not in error.instance]
        prefix = f"{where}." if where else ""
        return "missing required field " + ", ".join(f"'{prefix}{m}'" for m in missing)
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        prefix = f"{where}." if where else ""
        return (
            "unexpected field "
            + ", ".join(f"'{prefix}{k}'" for k in extra)
            + f"; allowed fields: {', '.join(sorted(allowed)) or 'none'}"
        )
    if error.validator in ("enum", "const"):
        options = error.validator_value if error.validator == "enum" else [error.validator_value]
        return (
            f"{field_name}: expected one of {', '.join(_short(o) for o in options)}, "
            f"got {_short(error.instance)}"
        )
    if error.validator in ("anyOf", "oneOf"):
        # When one branch has the instance's type, its own complaint is the useful one.
        same_type = [e for e in error.context or () if e.validator != "type" or e.path]
        if same_type:
            return _explain(min(same_type, key=lambda e: len(e.schema_path)))
        kinds = [_schema_kind(s) for s in error.validator_value]
        return f"{field_name}: expected {' or '.join(kinds)}, got {_short(error.instance)}"
    return f"{field_name}: {error.message}"


def _schema_kind(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(_short(o) for o in schema["enum"])
    if "const" in schema:
        return _short(schema["const"])
    return str(schema.get("type", "a value matching the schema"))


@overload
def function_tool(func: Callable[..., Any], /) -> FunctionTool: ...


@overload
def function_tool(
    *, name: str | None = None, description: str | None = None, timeout: float | None = None
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def function_tool(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make a developer function tool from a typed function, sync or async.

    Use as `@function_tool` or `@function_tool(name=..., description=..., timeout=...)`. The
    schema comes from the type hints (Optional, Literal, Enum, lists, dicts, pydantic models,
    TypedDicts, dataclasses, defaults) and the docstring's parameter descriptions. Sync functions
    run in a worker thread so they never block the agent's event loop. A first parameter typed
    `RunContext` receives the run's context (`Agent.run(..., context=...)`) and conversation.
    """

    def make(fn: Callable[..., Any]) -> FunctionTool:
        schema = function_schema(fn, name=name, description=description)

        async def on_invoke(args: dict[str, Any], *context: RunContext[Any]) -> Any:
            try:
                parsed = schema.model.model_validate(args)
            except PydanticValidationError as e:
                # What the JSON schema cannot say (custom validators) fails here, as precisely.
                recipient = f"functions.{schema.name}"
                raise invalid_arguments(
                    recipient, [_explain_pydantic(d) for d in e.errors()]
                ) from None
            kwargs = {k: getattr(parsed, k) for k in type(parsed).model_fields}
            if inspect.iscoroutinefunction(fn):
                return await fn(*context, **kwargs)
            return await asyncio.to_thread(functools.partial(fn, *context, **kwargs))

        return FunctionTool(
            name=schema.name,
            description=schema.description,
            parameters=schema.parameters,
            on_invoke=on_invoke,
            timeout=timeout,
            takes_context=schema.takes_context,
        )

    return make(func) if func is not None else make
