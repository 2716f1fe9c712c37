"""Errors as OpenAI's API reports them: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class ApiError(Exception):
    """A request the server answers with an error status instead of a result."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


_TYPES = {
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


def bad_request(param: str, message: str, code: str | None = None) -> ApiError:
    """A 400 naming the field at fault: `param` is its path, e.g. `input[2].call_id`."""
    return ApiError(
        400, f"{param}: {message}" if param else message, param=param or None, code=code
    )


def path_of(location: tuple[int | str, ...], prefix: str = "") -> str:
    """`("input", 2, "call_id")` as `input[2].call_id`."""
    path = prefix
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def from_validation(error: ValidationError) -> ApiError:
    """A pydantic error on a request body, as a 400 naming the first field at fault."""
    first = error.errors()[0]
    where = path_of(tuple(p for p in first["loc"] if not _is_union_branch(p)))
    return bad_request(where, first["msg"].removeprefix("Value error, "))


def _is_union_branch(part: int | str) -> bool:
    # pydantic names the branch it tried in a union (`str`, `list[...]`): not part of the path.
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"})
