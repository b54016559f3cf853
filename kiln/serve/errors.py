"""Errors a request or a model load can end in, each with its KServe v2 status.

The codes are Triton's (TRITONSERVER_Error_Code), and so is their mapping to HTTP statuses
and gRPC codes, so clients that branch on a status see what Triton would send.
"""

from __future__ import annotations

from kiln.errors import KilnError

# code -> (HTTP status, gRPC status code name)
STATUS = {
    "INVALID_ARG": (400, "INVALID_ARGUMENT"),
    "NOT_FOUND": (404, "NOT_FOUND"),
    "UNAVAILABLE": (503, "UNAVAILABLE"),
    "UNSUPPORTED": (501, "UNIMPLEMENTED"),
    "TOO_LARGE": (413, "RESOURCE_EXHAUSTED"),
    "CANCELLED": (400, "CANCELLED"),
    "INTERNAL": (500, "INTERNAL"),
}


class ServeError(KilnError):
    """A request or load that failed. `code` picks the HTTP status and the gRPC code;
    `reason` is the request-failure label of the metrics (REJECTED, CANCELED, BACKEND,
    OTHER)."""

    code = "INVALID_ARG"
    reason = "OTHER"

    def __init__(self, message: str, *, code: str | None = None, reason: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        if code is not None:
            if code not in STATUS:
                raise ValueError(f"unknown error code {code!r}")
            self.code = code
        if reason is not None:
            self.reason = reason

    @property
    def http_status(self) -> int:
        return STATUS[self.code][0]

    @property
    def grpc_code(self) -> str:
        return STATUS[self.code][1]


class NotFound(ServeError):
    code = "NOT_FOUND"


class Unavailable(ServeError):
    """Refused for now: a full queue, a model still loading, a server shutting down."""

    code = "UNAVAILABLE"
    reason = "REJECTED"


class Unsupported(ServeError):
    code = "UNSUPPORTED"
