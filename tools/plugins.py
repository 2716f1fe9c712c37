"""Finding tools outside the program: installed plugins and `module:attr` references.

A plugin package exposes tools under the entry-point group `harmony_agent.tools`:

    [project.entry-points."harmony_agent.tools"]
    weather = "weather_tools:TOOLS"

The object an entry point or reference names may be a tool, a `BuiltinTool` subclass (created
with no arguments), a plain function (wrapped with `@function_tool`), or a list of these.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from .base import BuiltinTool
from .function_tool import FunctionTool, function_tool

ENTRY_POINT_GROUP = "harmony_agent.tools"


class PluginError(Exception):
    """A tool reference or plugin that cannot be loaded; the message says which and why."""


def as_tools(obj: Any, origin: str) -> list[FunctionTool | BuiltinTool]:
    """Normalise what a plugin exposes into a list of tools."""
    if isinstance(obj, FunctionTool | BuiltinTool):
        return [obj]
    if inspect.isclass(obj) and issubclass(obj, BuiltinTool):
        try:
            return [obj()]
        except Exception as e:
            raise PluginError(f"{origin}: could not create {obj.__name__}(): {e}") from e
    if isinstance(obj, list | tuple):
        return [tool for item in obj for tool in as_tools(item, origin)]
    if inspect.isfunction(obj) or inspect.iscoroutinefunction(obj):
        try:
            return [function_tool(obj)]
        except TypeError as e:
            raise PluginError(f"{origin}: {e}") from e
    raise PluginError(
        f"{origin} is not a tool (got {type(obj).__name__}): expected a @function_tool, a "
        f"BuiltinTool (class or instance), a function, or a list of these"
    )


def load_reference(reference: str) -> list[FunctionTool | BuiltinTool]:
    """The tools named by `module:attr` (attr may be dotted, e.g. `pkg.mod:Class.TOOLS`)."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"bad tool reference {reference!r}: expected 'module:attribute'")
    obj: Any = _import(module_name, reference)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"{module_name!r} has no attribute {attr!r}") from None
    return as_tools(obj, reference)


def _import(module_name: str, reference: str) -> Any:
    """Import `module_name` from the installed packages or the current folder (a console
    script's own folder is no place to look). The folder goes last on sys.path, so that a file
    there cannot shadow a module that some library imports later."""
    folder = os.getcwd()
    if folder not in sys.path:
        sys.path.append(folder)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise PluginError(
                f"cannot import {module_name!r} for tool {reference!r}: no module {e.name!r} "
                f"in {folder} or the installed packages"
            ) from None
        raise PluginError(f"cannot import {module_name!r} for tool {reference!r}: {e}") from e
    except Exception as e:  # the module itself failed: a SyntaxError, an error it raised
        raise PluginError(
            f"cannot import {module_name!r} for tool {reference!r}: {type(e).__name__}: {e}"
        ) from e


def installed_plugins() -> dict[str, Callable[[], list[FunctionTool | BuiltinTool]]]:
    """Installed tool plugins by entry-point name; call a value to load that plugin's tools."""

    def loader(ep: Any) -> Callable[[], list[FunctionTool | BuiltinTool]]:
        def load() -> list[FunctionTool | BuiltinTool]:
            try:
                obj = ep.load()
            except Exception as e:
                raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {e}") from e
            return as_tools(obj, f"plugin {ep.name!r} ({ep.value})")

        return load

    return {ep.name: loader(ep) for ep in entry_points(group=ENTRY_POINT_GROUP)}
