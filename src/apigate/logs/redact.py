"""Masking of sensitive values (guide §1.5), applied to every event before any sink.

Rules, by field name (case-insensitive, '-' taken as '_') and by what a string holds:

- session tokens (`session`, `session_id`, `sessionid`, `session_token`, `x_session_token`)
  keep their first 4 characters + "****";
- `authorization`: "Bearer " + first 4 + "****"; any other scheme keeps only its name;
- API keys (`x_api_key`, `api_key`, `apikey`, `key`) and secrets (`password`, `passwd`,
  `secret`, `token`, and names ending in `_password`, `_secret`, `_token`, `_key`)
  become "[REDACTED]";
- in any string: "Bearer <token>" is masked as above and e-mail addresses become first
  character + "***@" + domain;
- the query string of `path` (and `url`, `query`, `target`) has its parameters masked by
  the same name rules.

The walk is cheap on purpose (it runs for every access event, off the request path):
the rule for a key is looked up in a memo, and strings are only searched with a regular
expression when a one-character test says they might match.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote_plus

REDACTED = "[REDACTED]"
SESSION_NAMES = frozenset({"session", "session_id", "sessionid", "session_token", "x_session_token"})
SECRET_NAMES = frozenset({"x_api_key", "api_key", "apikey", "key", "password", "passwd", "secret", "token"})
SECRET_SUFFIXES = ("_password", "_passwd", "_secret", "_token", "_key")
URL_FIELDS = frozenset({"path", "url", "query", "target"})

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_BEARER = re.compile(r"(?i)(bearer\s+)(\S{0,4})\S*")

# Rules: 0 nothing by name, 1 session (first 4), 2 secret, 3 authorization, 4 URL with a query.
_NONE, _SESSION, _SECRET, _AUTH, _URL = 0, 1, 2, 3, 4
_rules: dict[str, int] = {}


def _rule(key: str) -> int:
    rule = _rules.get(key)
    if rule is None:
        k = key.lower().replace("-", "_")
        if k in SESSION_NAMES:
            rule = _SESSION
        elif k in SECRET_NAMES or k.endswith(SECRET_SUFFIXES):
            rule = _SECRET
        elif k in ("authorization", "proxy_authorization"):
            rule = _AUTH
        elif k in URL_FIELDS:
            rule = _URL
        else:
            rule = _NONE
        if len(_rules) < 4096:  # the memo is bounded: field names come from code, not clients
            _rules[key] = rule
    return rule


def mask_session(value: str) -> str:
    return value[:4] + "****"


def mask_authorization(value: str) -> str:
    scheme, _, cred = value.strip().partition(" ")
    if scheme.lower() == "bearer":
        return "Bearer " + cred.strip()[:4] + "****"
    return (scheme + " " + REDACTED) if cred else REDACTED


def _email_sub(m: re.Match[str]) -> str:
    return m.group(1) + "***@" + m.group(2)


def _bearer_sub(m: re.Match[str]) -> str:
    return "Bearer " + m.group(2) + "****"


def redact_text(s: str) -> str:
    """E-mail addresses and Bearer tokens anywhere in a free-form string."""
    if "@" in s:
        s = _EMAIL.sub(_email_sub, s)
    if "earer" in s or "EARER" in s:
        s = _BEARER.sub(_bearer_sub, s)
    return s


def redact_query(query: str) -> str:
    """A query string (without '?'): each parameter masked by its name's rule."""
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, eq, value = part.partition("=")
        if not eq:
            continue
        rule = _rule(unquote_plus(name))
        if rule == _SECRET:
            parts[i] = name + "=" + REDACTED
        elif rule == _SESSION:
            parts[i] = name + "=" + mask_session(value)
        elif rule == _AUTH:
            parts[i] = name + "=" + quote(mask_authorization(unquote_plus(value)))
        elif "%40" in value or "@" in value:
            parts[i] = name + "=" + quote(redact_text(unquote_plus(value)), safe="@*")
    return "&".join(parts)


def redact_url(s: str) -> str:
    base, q, query = s.partition("?")
    if q:
        s = base + "?" + redact_query(query)
    return redact_text(s)


def _value(rule: int, v: Any) -> Any:
    if rule == _SECRET:
        return REDACTED if v is not None else None
    if type(v) is str:
        if rule == _NONE:
            return redact_text(v) if ("@" in v or "earer" in v or "EARER" in v) else v
        if rule == _URL:
            return redact_url(v) if ("?" in v or "@" in v or "%40" in v) else v
        if rule == _SESSION:
            return mask_session(v)
        return mask_authorization(v)
    if type(v) is dict:
        return redact(v)
    if type(v) in (list, tuple):
        return [_value(rule, x) for x in v]
    if rule in (_SESSION, _AUTH) and v is not None:
        return REDACTED
    return v


def redact(event: dict[str, Any]) -> dict[str, Any]:
    """The event with every sensitive value masked; a new dict when something changed.

    The common case (a value with nothing to mask) is decided inline, without a call.
    """
    out: dict[str, Any] | None = None
    rules = _rules
    for k, v in event.items():
        rule = rules.get(k)
        if rule is None:
            rule = _rule(k)
        t = type(v)
        if t is str:
            if rule == _NONE:
                if "@" not in v and "earer" not in v and "EARER" not in v:
                    continue
            elif rule == _URL and "?" not in v and "@" not in v and "%40" not in v:
                continue
        elif v is None or ((t is int or t is float or t is bool) and rule != _SECRET):
            continue
        nv = _value(rule, v)
        if nv is not v and nv != v:
            if out is None:
                out = dict(event)
            out[k] = nv
    return event if out is None else out
