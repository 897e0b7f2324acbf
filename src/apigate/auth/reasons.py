"""Why a request failed authentication, in one place.

The reason strings are the `reason` label of `auth_failures_total` and the `reason`
field of the `auth_failed` log event, so dashboards and log searches can rely on them.
The descriptions go to the client (`error_description` in WWW-Authenticate, RFC 6750
§3, and the JSON body's message): fixed text, never anything taken from the token.
"""

from __future__ import annotations

MISSING = "missing"
MALFORMED = "malformed"
BAD_SIGNATURE = "bad_signature"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
BAD_ISSUER = "bad_issuer"
BAD_AUDIENCE = "bad_audience"
UNKNOWN_SESSION = "unknown_session"
STORE_UNAVAILABLE = "store_unavailable"
INSUFFICIENT_SCOPE = "insufficient_scope"  # a 403, not a 401: the token is fine, its scopes are not

DESCRIPTIONS: dict[str, str] = {
    MISSING: "Authentication is required.",
    MALFORMED: "The token is malformed.",
    BAD_SIGNATURE: "The token signature is invalid.",
    EXPIRED: "The token has expired.",
    NOT_YET_VALID: "The token is not valid yet.",
    BAD_ISSUER: "The token issuer is not accepted.",
    BAD_AUDIENCE: "The token audience is not accepted.",
    UNKNOWN_SESSION: "The session is unknown or has ended.",
    STORE_UNAVAILABLE: "The credential store is unavailable.",
    INSUFFICIENT_SCOPE: "The token lacks a required scope.",
}

REASONS: tuple[str, ...] = tuple(DESCRIPTIONS)


class AuthFailure(Exception):
    """A token was refused; `reason` is one of REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
