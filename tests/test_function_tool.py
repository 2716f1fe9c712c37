"""@function_tool: schemas from signatures, validation before the call, results as text."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import pytest
from openai_harmony import DeveloperContent, Message, Role
from pydantic import BaseModel, Field, field_validator
from typing_extensions import TypedDict

from harmony_agent.model import harmony_encoding
from harmony_agent.tools import FunctionTool, RunContext, ToolError, function_tool


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Point(BaseModel):
    x: float
    y: float = 0.0


class Box(TypedDict):
    width: int
    label: str


@dataclasses.dataclass
class Span:
    start: int
    end: int


def no_args() -> str:
    """Say hi."""
    return "hi"


def scalars(name: str, count: int, ratio: float, flag: bool) -> None:
    """Scalars.

    Args:
        name: Who.
        count: How many.
    """


def defaults(unit: str = "c", limit: int | None = None) -> None:
    """Defaults.

    :param unit: The unit.
    :param limit: At most this many.
    """


def choices(color: Color, mode: Literal["fast", "slow"] = "fast") -> None:
    """Choices."""


def containers(tags: list[str], weights: dict[str, float], pairs: list[tuple[int, int]]) -> None:
    """Containers."""


def nested(point: Point, box: Box, span: Span, points: list[Point] | None = None) -> None:
    """Nested types.

    Parameters
    ----------
    point
        The anchor.
    """


def annotated(n: Annotated[int, Field(ge=1, le=10, description="Between 1 and 10.")]) -> None:
    """Constrained."""


def unions(value: int | str) -> None:
    """A union."""


CASES: list[tuple[Any, dict[str, Any]]] = [
    (no_args, {"type": "object", "properties": {}, "additionalProperties": False}),
    (
        scalars,
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "Who."},
                "count": {"type": "integer", "description": "How many."},
                "ratio": {"type": "number"},
                "flag": {"type": "boolean"},
            },
            "required": ["name", "count", "ratio", "flag"],
            "additionalProperties": False,
        },
    ),
    (
        defaults,
        {
            "type": "object",
            "properties": {
                "unit": {"type": "string", "default": "c", "description": "The unit."},
                "limit": {
                    "anyOf": [{"type": "integer"}, {"type": "null"}],
                    "default": None,
                    "description": "At most this many.",
                },
            },
            "additionalProperties": False,
        },
    ),
    (
        choices,
        {
            "type": "object",
            "properties": {
                "color": {"type": "string", "enum": ["red", "green"]},
                "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
            },
            "required": ["color"],
            "additionalProperties": False,
        },
    ),
    (
        containers,
        {
            "type": "object",
            "properties": {
                "tags": {"type": "array", "items": {"type": "string"}},
                "weights": {"type": "object", "additionalProperties": {"type": "number"}},
                "pairs": {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "maxItems": 2,
                        "minItems": 2,
                        "prefixItems": [{"type": "integer"}, {"type": "integer"}],
                    },
                },
            },
            "required": ["tags", "weights", "pairs"],
            "additionalProperties": False,
        },
    ),
    (
        annotated,
        {
            "type": "object",
            "properties": {
                "n": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 10,
                    "description": "Between 1 and 10.",
                },
            },
            "required": ["n"],
            "additionalProperties": False,
        },
    ),
    (
        unions,
        {
            "type": "object",
            "properties": {"value": {"anyOf": [{"type": "integer"}, {"type": "string"}]}},
            "required": ["value"],
            "additionalProperties": False,
        },
    ),
]


@pytest.mark.parametrize(("func", "schema"), CASES, ids=[f.__name__ for f, _ in CASES])
def test_schema_from_signature(func: Any, schema: dict[str, Any]) -> None:
    tool = function_tool(func)
    assert tool.name == func.__name__
    assert tool.parameters == schema
    assert tool.description == func.__doc__.splitlines()[0]


def test_nested_types_are_inlined() -> None:
    params = function_tool(nested).parameters
    assert "$defs" not in str(params) and "$ref" not in str(params)
    point = {
        "type": "object",
        "properties": {"x": {"type": "number"}, "y": {"type": "number", "default": 0.0}},
        "required": ["x"],
    }
    assert params["properties"]["point"] == {**point, "description": "The anchor."}
    assert params["properties"]["box"]["properties"] == {
        "width": {"type": "integer"},
        "label": {"type": "string"},
    }
    assert params["properties"]["span"]["required"] == ["start", "end"]
    assert params["properties"]["points"]["anyOf"][0] == {"type": "array", "items": point}


def test_decorator_options_and_description_body() -> None:
    def lookup(key: str) -> str:
        """Look a key up.

        Longer explanation of the lookup.

        Args:
            key: The key.
        """
        return key

    tool = function_tool(name="find", description="Find things.", timeout=3.0)(lookup)
    assert (tool.name, tool.description, tool.timeout) == ("find", "Find things.", 3.0)
    assert (
        function_tool(lookup).description == "Look a key up.\n\nLonger explanation of the lookup."
    )


def test_arguments_become_python_values() -> None:
    seen = {}

    @function_tool
    def take(point: Point, color: Color, box: Box, span: Span, tags: list[str] | None = None):
        """Take."""
        seen.update(point=point, color=color, box=box, span=span, tags=tags)
        return {"ok": True, "point": point}

    out = asyncio.run(
        take.invoke(
            '{"point": {"x": 1}, "color": "green", "box": {"width": 2, "label": "b"}, '
            '"span": {"start": 1, "end": 4}}'
        )
    )
    assert seen == {
        "point": Point(x=1.0),
        "color": Color.GREEN,
        "box": {"width": 2, "label": "b"},
        "span": Span(1, 4),
        "tags": None,
    }
    assert out == '{"ok": true, "point": {"x": 1.0, "y": 0.0}}'


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ('{"n": 0}', "- field 'n': 0 is less than the minimum of 1"),
        ('{"n": "3"}', "- field 'n': expected integer, got string \"3\""),
        ("{}", "- missing required field 'n'"),
    ],
)
def test_constraint_violations(arguments: str, message: str) -> None:
    with pytest.raises(ToolError) as info:
        asyncio.run(function_tool(annotated).invoke(arguments))
    assert str(info.value) == f"Invalid arguments for functions.annotated:\n{message}"


def test_nested_violation_points_into_the_structure() -> None:
    with pytest.raises(ToolError) as info:
        asyncio.run(
            function_tool(nested).invoke(
                '{"point": {"x": "far"}, "box": {"width": 1, "label": "l"}, '
                '"span": {"start": 0, "end": 1}, "points": [{"x": 1}, {"y": 2}]}'
            )
        )
    assert str(info.value).splitlines()[1:] == [
        "- field 'point.x': expected number, got string \"far\"",
        "- missing required field 'points[1].x'",
    ]


class Order(BaseModel):
    quantity: int
    sku: str

    @field_validator("sku")
    @classmethod
    def known_prefix(cls, value: str) -> str:
        if not value.startswith("SKU-"):
            raise ValueError("sku must start with 'SKU-'")
        return value


def test_a_custom_validator_reads_like_a_schema_error() -> None:
    def place(order: Order, note: str = "") -> str:
        return f"placed {order.quantity}"

    tool = function_tool(place)
    with pytest.raises(ToolError) as info:
        asyncio.run(tool.invoke('{"order": {"quantity": 2, "sku": "42"}}'))
    assert str(info.value) == (
        "Invalid arguments for functions.place:\n- field 'order.sku': sku must start with 'SKU-'"
    )
    assert asyncio.run(tool.invoke('{"order": {"quantity": 2, "sku": "SKU-1"}}')) == "placed 2"


def test_empty_arguments_mean_no_arguments() -> None:
    assert asyncio.run(function_tool(no_args).invoke("")) == "hi"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        (3, "3"),
        (None, "null"),
        ([1, "é"], '[1, "é"]'),
        (Span(1, 2), '{"start": 1, "end": 2}'),
        (Point(x=1), '{"x":1.0,"y":0.0}'),
        ({1, 2}, "[1, 2]"),
    ],
)
def test_results_as_text(value: Any, text: str) -> None:
    @function_tool
    def give() -> Any:
        """Give."""
        return value

    assert asyncio.run(give.invoke("{}")) == text


def test_unsupported_signatures_fail_at_decoration() -> None:
    def star(*args: int) -> None: ...

    with pytest.raises(TypeError, match=r"\*args"):
        function_tool(star)


class Opaque:
    """A class pydantic knows no schema for."""


@pytest.mark.parametrize(
    ("annotation", "shown"), [(Callable[[int], int], "Callable"), (Opaque, "Opaque")]
)
def test_a_parameter_json_cannot_describe_is_one_line_naming_it(
    annotation: Any, shown: str
) -> None:
    def tool(count: int, hook: Any) -> int:
        return count

    tool.__annotations__["hook"] = annotation
    with pytest.raises(TypeError) as info:
        function_tool(tool)
    message = str(info.value)
    assert "\n" not in message
    assert f"parameter 'hook' has type {shown}" in message


def test_harmony_renders_optional_and_unions_as_types() -> None:
    dev = DeveloperContent.new().with_function_tools(
        [function_tool(defaults).tool_description(), function_tool(unions).tool_description()]
    )
    text = harmony_encoding().decode(
        harmony_encoding().render(Message.from_role_and_content(Role.DEVELOPER, dev))
    )
    assert "limit?: number | null, // default: null" in text
    assert "value:\n | number\n | string\n," in text
    assert re.findall(r"\bany\b", text) == ["any", "any"]  # only the return types


def test_function_tool_is_a_dataclass_for_hand_made_tools() -> None:
    async def echo(args: dict[str, Any]) -> str:
        return args["text"]

    tool = FunctionTool(
        name="echo",
        description="Echo text.",
        parameters={
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
        on_invoke=echo,
    )
    assert asyncio.run(tool.invoke('{"text": "hey"}')) == "hey"
    with pytest.raises(Exception, match="is not valid under any of the given schemas"):
        FunctionTool(name="bad", description="", parameters={"type": 3}, on_invoke=echo)


def test_a_run_context_parameter_is_passed_in_and_not_described() -> None:
    @function_tool
    async def greet(ctx: RunContext[str], name: str) -> str:
        """Greet someone.

        Args:
            name: who to greet
        """
        return f"{ctx.context}, {name} (via {ctx.recipient})"

    assert greet.takes_context
    assert greet.parameters["required"] == ["name"]
    assert set(greet.parameters["properties"]) == {"name"}
    ctx = RunContext("Hello", (), "functions.greet")
    assert asyncio.run(greet.invoke('{"name": "Ada"}', ctx)) == "Hello, Ada (via functions.greet)"
    # Called outside an agent, the tool still gets a context, with nothing in it.
    assert asyncio.run(greet.invoke('{"name": "Ada"}')) == "None, Ada (via functions.greet)"


def test_a_run_context_parameter_must_come_first() -> None:
    with pytest.raises(TypeError, match="RunContext parameter 'ctx' must come first"):

        @function_tool
        def late(name: str, ctx: RunContext) -> str:
            return name
