"""Inputs of bench/matrix.sh (issue 18's benchmark matrix) that are generated, not written by hand.

matrix_gen.py routes SRC.yaml N      the config SRC with its routes replaced by N routes: N-1
                                     decoys (distinct paths) and GET /api/users, measured, last;
                                     every one with auth and a rate limit by user (stdout)
matrix_gen.py tokens N OUTDIR        N HS256 tokens signed with $JWT_SECRET, one per user
                                     (sub user-00001 ...): OUTDIR/tokens.txt, OUTDIR/headers.txt
                                     (`apigate loadtest --header-file`) and OUTDIR/tokens.lua
                                     (a wrk script rotating them over the requests)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROUTE_TEMPLATE = """  - id: {id}
    methods: [GET]
    path: {path}
    upstream_id: matrix-upstream
    auth_required: true
    rate_limit:
      limit: 1000000000
      window_secs: 60
      algorithm: token_bucket
      key_type: user
"""


def routes_config(src_text: str, n: int, measured: str = "/api/users") -> str:
    """SRC's text up to its `routes:` key, then n routes; the measured one is the last."""
    head, sep, _ = src_text.partition("\nroutes:")
    if not sep:
        raise ValueError("the source configuration has no top-level 'routes:' key")
    lines = [
        head,
        "",
        f"# {n} routes (bench/matrix_gen.py): {n - 1} decoys, then the measured {measured}",
        "routes:",
    ]
    body = [ROUTE_TEMPLATE.format(id=f"decoy{i:03d}", path=f"/api/v1/svc{i:03d}/items") for i in range(1, n)]
    body.append(ROUTE_TEMPLATE.format(id="users", path=measured))
    return "\n".join(lines) + "\n" + "".join(body)


def mint_tokens(n: int, secret: str, ttl_s: int = 86400) -> list[str]:
    import jwt

    now = int(time.time())
    return [
        jwt.encode({"sub": f"user-{i:05d}", "iat": now, "exp": now + ttl_s}, secret, algorithm="HS256")
        for i in range(1, n + 1)
    ]


def wrk_script(tokens: list[str]) -> str:
    """A wrk script: every request carries the next token (each wrk thread cycles through all)."""
    quoted = ",\n".join(f'  "{t}"' for t in tokens)
    return f"""-- bench/matrix_gen.py: {len(tokens)} HS256 tokens, one per user, rotated over the requests
local tokens = {{
{quoted}
}}
local reqs = {{}}
local i = 0
init = function(args)
  for k, t in ipairs(tokens) do
    reqs[k] = wrk.format(nil, nil, {{ ["Authorization"] = "Bearer " .. t }})
  end
end
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
"""


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "routes":
        sys.stdout.write(routes_config(Path(argv[1]).read_text(encoding="utf-8"), int(argv[2])))
        return 0
    if len(argv) == 3 and argv[0] == "tokens":
        secret = os.environ.get("JWT_SECRET", "")
        if not secret:
            print("matrix_gen.py tokens: JWT_SECRET is not set", file=sys.stderr)
            return 2
        tokens = mint_tokens(int(argv[1]), secret)
        out = Path(argv[2])
        out.mkdir(parents=True, exist_ok=True)
        (out / "tokens.txt").write_text("".join(t + "\n" for t in tokens), encoding="ascii")
        (out / "headers.txt").write_text(
            "".join(f"Authorization: Bearer {t}\n" for t in tokens), encoding="ascii"
        )
        (out / "tokens.lua").write_text(wrk_script(tokens), encoding="ascii")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
