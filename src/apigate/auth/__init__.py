"""Authentication: JWT and session tokens per route, verified once and then cached.

- `filter.py`  the AuthFilter (priority 1250): token in, identity headers out, or 401/403/503
- `jwt.py`     PyJWT pinned to the configured algorithm and key; minting for `apigate token`
- `jwks.py`    a JWKS URL's keys, fetched at start, refreshed, refetched on an unknown kid
- (config/jwt_keys.py: which key fits which algorithm, shared with `apigate check`)
- `sessions.py` opaque session tokens in memory or in Redis
- `cache.py`   verified claims by token, bounded by `max_capacity` and by the token's exp
- `reasons.py` the failure reasons (auth_failures_total{reason}) and their descriptions
- `cli.py`     `apigate token` and `apigate session create|revoke`

Nothing is imported here, so that the gateway loads PyJWT only when an `auth:` section
exists.
"""
