"""Errors with a stable machine-readable `code`.

Every error a user can provoke is one of these. The server renders them as RFC 9457
`application/problem+json`; the CLI prints `error[code]: detail` on one line and exits non-zero.
The `code` strings are part of the API: clients and tests match on them, so never rename one.
"""

from __future__ import annotations

from typing import Any


class DCSError(Exception):
    status: int = 500
    code: str = "internal-error"
    title: str = "Internal error"

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.extra = extra

    def to_problem(self) -> dict[str, Any]:
        problem: dict[str, Any] = {
            "type": f"https://junodcs.org/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        problem.update(self.extra)
        return problem


class InvalidInput(DCSError):
    status = 422
    code = "invalid-input"
    title = "Invalid input"


class ConfigError(DCSError):
    status = 422
    code = "config-invalid"
    title = "Invalid configuration"


class NotFound(DCSError):
    status = 404
    code = "not-found"
    title = "Not found"


class Conflict(DCSError):
    status = 409
    code = "conflict"
    title = "Conflict"


class Unauthenticated(DCSError):
    """The credential is missing or invalid (bad signature, expired, wrong audience, unknown issuer...)."""

    status = 401
    code = "unauthenticated"
    title = "Authentication failed"


class Forbidden(DCSError):
    """The caller is known but lacks the scope or property the action needs."""

    status = 403
    code = "forbidden"
    title = "Forbidden"


class ServiceUnavailable(DCSError):
    status = 503
    code = "unavailable"
    title = "Service unavailable"


class RemoteError(DCSError):
    """A server answered with a problem document; raised by clients so callers see the server's code."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail, code=code, **extra)
        self.status = status
