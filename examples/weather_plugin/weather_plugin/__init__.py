"""Example tool plugin: weather lookups the model can call as `functions.get_weather` and
`functions.get_forecast`.

The data is a small built-in table so the example runs offline; a real plugin would call a
weather service here (async functions are fine: they run on the agent's event loop).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from harmony_agent.tools import ToolError, function_tool

_CELSIUS = {"paris": 18.0, "oslo": 4.0, "cairo": 31.0, "lima": 19.5}


class Forecast(BaseModel):
    city: str
    days: list[float]
    unit: Literal["celsius", "fahrenheit"]


def _convert(celsius: float, unit: str) -> float:
    return round(celsius * 9 / 5 + 32, 1) if unit == "fahrenheit" else celsius


def _lookup(city: str) -> float:
    try:
        return _CELSIUS[city.strip().lower()]
    except KeyError:
        # ToolError: the model reads this and can try another city.
        raise ToolError(
            f"no weather for {city!r}; known cities: {', '.join(sorted(_CELSIUS))}"
        ) from None


@function_tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Current temperature in a city.

    Args:
        city: City name, e.g. "Paris".
        unit: Temperature unit.
    """
    return {"city": city, "temperature": _convert(_lookup(city), unit), "unit": unit}


@function_tool
async def get_forecast(
    city: str, days: int = 3, unit: Literal["celsius", "fahrenheit"] = "celsius"
) -> Forecast:
    """Temperature forecast for the next days.

    Args:
        city: City name.
        days: Number of days, 1 to 7.
        unit: Temperature unit.
    """
    if not 1 <= days <= 7:
        raise ToolError(f"days must be between 1 and 7, got {days}")
    base = _lookup(city)
    return Forecast(city=city, days=[_convert(base + d, unit) for d in range(days)], unit=unit)


TOOLS = [get_weather, get_forecast]
