"""HTTP basic auth (RFC 7617) for the status page, against a bcrypt hash from the config.

bcrypt is slow on purpose (about 0.1-0.3 s at cost 12), and the admin listener runs on a
worker's event loop: so a header that passed once is remembered (its SHA-256, a handful
of them) and a page refreshing every 2 s costs one bcrypt check per viewer, not one per
refresh. The password itself is never stored, logged or compared in the clear.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections import OrderedDict
from typing import Final

import bcrypt

REMEMBERED: Final = 16
CHALLENGE: Final = (b"www-authenticate", b'Basic realm="apigate status", charset="UTF-8"')


class BasicAuth:
    def __init__(self, username: str, password_hash: str) -> None:
        self.username = username.encode()
        self.password_hash = password_hash.encode()
        self.passed: OrderedDict[bytes, None] = OrderedDict()

    def allows(self, authorization: bytes | None) -> bool:
        """Whether an Authorization header value carries the configured user and password."""
        if authorization is None:
            return False
        digest = hashlib.sha256(authorization).digest()
        if digest in self.passed:
            self.passed.move_to_end(digest)
            return True
        scheme, _, encoded = authorization.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        if not sep or not hmac.compare_digest(user, self.username):
            return False
        if not bcrypt.checkpw(password, self.password_hash):
            return False
        self.passed[digest] = None
        if len(self.passed) > REMEMBERED:
            self.passed.popitem(last=False)
        return True
