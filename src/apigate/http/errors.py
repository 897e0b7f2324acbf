"""Every error the gateway itself produces, in one place, owned by the listener.

The listener answers some requests on its own (400 malformed, 408, 413, 431, 503), so
the error bodies live at its layer; the gateway, its filters and the admin listener use
the same function. The body shape is stable, `{"error": code, "message": text,
"correlation_id": id}`, so clients and log searches can rely on it; no stack trace or
internal detail ever goes in.
"""

from __future__ import annotations

from typing import Final

import orjson

from apigate.http.headers import Headers

# code -> (status, default message)
ERRORS: Final[dict[str, tuple[int, str]]] = {
    "bad_request": (400, "The request is malformed."),
    "unauthenticated": (401, "Authentication is required."),
    "forbidden": (403, "Access is denied."),
    "not_found": (404, "No route matches this path."),
    "method_not_allowed": (405, "This route does not accept this method."),
    "request_timeout": (408, "The request was not received in time."),
    "payload_too_large": (413, "The request body is too large."),
    "rate_limited": (429, "Too many requests."),
    "headers_too_large": (431, "The request headers are too large."),
    "internal_error": (500, "The gateway failed to handle the request."),
    "upstream_unavailable": (502, "The upstream service could not be reached."),
    "bad_gateway": (502, "The upstream service sent an invalid response."),
    "overloaded": (503, "The gateway is at its connection limit."),
    "draining": (503, "The gateway is shutting down."),
    "rate_limit_unavailable": (503, "The rate-limit store is unavailable."),
    "auth_unavailable": (503, "The session store or the identity provider's keys are unavailable."),
    "upstream_timeout": (504, "The upstream service did not answer in time."),
    "not_implemented": (501, "The request's transfer coding is not supported."),
    "http_version_not_supported": (505, "Only HTTP/1.0 and HTTP/1.1 are served."),
}

JSON_CONTENT_TYPE: Final = (b"content-type", b"application/json")
NO_STORE: Final = (b"cache-control", b"no-store")


def json_headers() -> Headers:
    """The headers of every JSON answer the gateway makes itself (errors, health, status):
    a new list each time, since callers append to it."""
    return [JSON_CONTENT_TYPE, NO_STORE]


def error_body(code: str, correlation_id: str | None, message: str | None = None) -> tuple[int, bytes]:
    """(status, JSON body) for an error code from ERRORS."""
    status, default = ERRORS[code]
    doc = {"error": code, "message": message or default, "correlation_id": correlation_id}
    return status, orjson.dumps(doc)


def error_headers(extra: Headers | None = None) -> Headers:
    headers = json_headers()
    if extra:
        headers.extend(extra)
    return headers


class HttpError(Exception):
    """Raised inside parser callbacks to answer with a gateway error code and close
    (h11's habit: an error carries the HTTP status it implies)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code
