"""A JSON schema for a Python function, read from its signature, type hints and docstring."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_origin, get_type_hints

import docstring_parser
from pydantic import BaseModel, ConfigDict, Field, PydanticUserError, create_model

from .run_context import RunContext


@dataclass(frozen=True)
class FunctionSchema:
    """How a function is described to the model and how its arguments are checked."""

    name: str
    description: str
    parameters: dict[str, Any]
    """The JSON schema of the arguments object, `$ref`s inlined so the model sees whole types."""
    model: type[BaseModel]
    """Turns validated JSON arguments into the Python values the function takes."""
    takes_context: bool = False
    """The function's first parameter is a `RunContext`, passed by the agent, not the model."""


def function_schema(
    func: Callable[..., Any], name: str | None = None, description: str | None = None
) -> FunctionSchema:
    """Describe `func`: parameter types from its hints, descriptions from its docstring.

    Google, reST (`:param x:`), NumPy and Epydoc docstrings are understood. Defaults make a
    parameter optional; `*args`/`**kwargs` are not supported (the model passes one JSON object).
    A first parameter typed `RunContext` is not described: the agent passes it.
    """
    doc = docstring_parser.parse(inspect.getdoc(func) or "")
    param_docs = {p.arg_name: p.description for p in doc.params}
    hints = get_type_hints(func, include_extras=True)
    fields: dict[str, Any] = {}
    params = list(inspect.signature(func).parameters.values())
    takes_context = bool(params) and _is_run_context(hints.get(params[0].name))
    for i, param in enumerate(params):
        if i == 0 and takes_context:
            continue
        if _is_run_context(hints.get(param.name)):
            raise TypeError(
                f"function tool {func.__qualname__}: the RunContext parameter {param.name!r} "
                "must come first"
            )
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(
                f"function tool {func.__qualname__}: *{param.name} / **{param.name} cannot be "
                f"described to the model; use named parameters"
            )
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        doc_text = param_docs.get(param.name)
        # Leave a description given through Annotated[..., Field(description=...)] untouched.
        fields[param.name] = (
            annotation,
            Field(default, description=doc_text) if doc_text else default,
        )
    try:
        model = _arguments_model(func.__name__, fields)
        schema = model.model_json_schema()
    except PydanticUserError as e:  # a type JSON cannot describe: Callable, an arbitrary class
        raise TypeError(_undescribable(func, fields, hints, e)) from None
    summary = "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
    return FunctionSchema(
        name=name or func.__name__,
        description=description if description is not None else summary,
        parameters=_clean(_inline_refs(schema)),
        model=model,
        takes_context=takes_context,
    )


def _arguments_model(name: str, fields: dict[str, Any]) -> type[BaseModel]:
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
    )


def _undescribable(
    func: Callable[..., Any],
    fields: dict[str, Any],
    hints: dict[str, Any],
    error: PydanticUserError,
) -> str:
    """One line naming the parameter whose type has no JSON schema, found by trying each."""
    for param, field in fields.items():
        try:
            _arguments_model(func.__name__, {param: field}).model_json_schema()
        except PydanticUserError:
            shown = getattr(hints.get(param), "__name__", None) or repr(hints.get(param))
            return (
                f"function tool {func.__qualname__}: parameter {param!r} has type {shown}, "
                "which the model cannot be told as JSON; use str, numbers, bool, lists, dicts, "
                "enums, Literal, dataclasses, TypedDicts or pydantic models"
            )
    return f"function tool {func.__qualname__}: {error.message.splitlines()[0]}"


def _is_run_context(annotation: Any) -> bool:
    return annotation is RunContext or get_origin(annotation) is RunContext


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace `{"$ref": "#/$defs/X"}` by X itself: harmony renders schemas for the model as
    TypeScript-like types and does not follow references. Recursive types keep their `$ref`."""
    defs = schema.pop("$defs", {})

    def walk(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [walk(n, seen) for n in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            key = ref.removeprefix("#/$defs/")
            if key in seen:
                raise TypeError(f"recursive type {key} cannot be described to the model")
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return walk({**defs[key], **rest}, seen | {key})
        return {k: walk(v, seen) for k, v in node.items()}

    return walk(schema, frozenset())


def _clean(node: Any) -> Any:
    """Drop pydantic's generated titles: noise in the model's prompt."""
    if isinstance(node, list):
        return [_clean(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        # `properties` maps names to schemas: a parameter called "title" must survive.
        out[key] = (
            {k: _clean(v) for k, v in value.items()} if key == "properties" else _clean(value)
        )
    return out


def harmony_parameters(schema: Any) -> Any:
    """The schema as harmony's renderer understands it: it shows `oneOf` and `nullable` as
    TypeScript unions but renders `anyOf` (pydantic's form of Optional and unions) as `any`."""
    if isinstance(schema, list):
        return [harmony_parameters(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    node = {k: harmony_parameters(v) for k, v in schema.items()}
    branches = node.pop("anyOf", None)
    if branches is None:
        return node
    non_null = [b for b in branches if b.get("type") != "null"]
    nullable = len(non_null) < len(branches)
    merged = {**non_null[0], **node} if len(non_null) == 1 else {"oneOf": non_null, **node}
    return {**merged, "nullable": True} if nullable else merged
