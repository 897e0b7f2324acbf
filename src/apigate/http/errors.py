"""Exceptions that carry the gateway error code they imply (h11's habit)."""


class HttpError(Exception):
    """Raised inside parser callbacks to answer with a gateway error code and close."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code
