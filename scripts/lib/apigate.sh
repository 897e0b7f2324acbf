# shellcheck shell=bash
# Sourced by the operations scripts in scripts/: runs the `apigate` command they wrap.
# Which apigate: $APIGATE if set, else this repository's .venv/bin/apigate, else the one on PATH.

run_apigate() {
  local root bin
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  bin=${APIGATE:-}
  if [ -z "$bin" ]; then
    if [ -x "$root/.venv/bin/apigate" ]; then
      bin="$root/.venv/bin/apigate"
    elif command -v apigate >/dev/null 2>&1; then
      bin=$(command -v apigate)
    else
      echo "$(basename "$0"): apigate not found (run 'make install', or set APIGATE=/path/to/apigate)" >&2
      exit 1
    fi
  fi
  exec "$bin" "$@"
}
