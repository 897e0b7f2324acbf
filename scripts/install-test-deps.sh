#!/usr/bin/env bash
# Install the external programs the test suite runs, when they are missing.
#
#   redis-server  (redis-server)             rate limits / sessions against a real Redis
#   nginx         (nginx-light)              upstream for keep-alive and proxy tests, bench
#   wrk           (wrk)                      load generator (bench, load tests)
#   promtool      (prometheus)               checks alert and recording rules
#   amtool        (prometheus-alertmanager)  checks the Alertmanager config
#   chromium      (chromium)                 a real browser applying CORS (tests/integration/test_traffic_cors.py)
#   chromedriver  (chromium-driver)          drives it through selenium
#   the linter shellcheck (shellcheck)       checks every script in scripts/ (tests/deploy)
#
# And kubectl (`kubectl kustomize` renders deploy/k8s offline, tests/deploy), which Debian
# does not ship in a usable version (kubernetes-client is 1.20, without kustomize v5): it
# must come from the Kubernetes apt repository; this script only says so when it is missing.
#
# As root: apt-get installs what is missing (services are not started by the install).
# Not root: prints what to install; exits non-zero when CI=true (nothing may be skipped in CI),
# zero otherwise (tests that need a missing tool then skip with a reason).
set -euo pipefail

# tool  package  paths to look at besides $PATH (daemons live in /usr/sbin, not on a user's PATH)
TOOLS=(
  "redis-server redis-server /usr/bin/redis-server /usr/sbin/redis-server"
  "nginx nginx-light /usr/sbin/nginx"
  "wrk wrk /usr/bin/wrk"
  "promtool prometheus /usr/bin/promtool"
  "amtool prometheus-alertmanager /usr/bin/amtool"
  "shellcheck shellcheck /usr/bin/shellcheck"
  "chromium chromium /usr/bin/chromium"
  "chromedriver chromium-driver /usr/bin/chromedriver"
)

have() {
  local tool=$1 path
  shift
  command -v "$tool" >/dev/null 2>&1 && return 0
  for path in "$@"; do [ -x "$path" ] && return 0; done
  return 1
}

missing_tools=()
missing_pkgs=()
for entry in "${TOOLS[@]}"; do
  read -r tool pkg paths <<<"$entry"
  # shellcheck disable=SC2086  # $paths is a space-separated list on purpose
  if ! have "$tool" $paths; then
    missing_tools+=("$tool")
    missing_pkgs+=("$pkg")
  fi
done

if ! have kubectl /usr/bin/kubectl /usr/local/bin/kubectl; then
  echo "kubectl is missing: install it from the Kubernetes apt repository (package kubectl)" >&2
  if [ "${CI:-}" = "true" ]; then
    echo "CI=true: refusing to run the suite without kubectl" >&2
    exit 1
  fi
fi

if [ ${#missing_pkgs[@]} -eq 0 ]; then
  echo "test tools: all present (redis-server nginx wrk promtool amtool shellcheck chromium chromedriver)"
  exit 0
fi

echo "test tools missing: ${missing_tools[*]} (packages: ${missing_pkgs[*]})"

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  cat >&2 <<EOF
Cannot install them here (need root and apt-get). Install them with:

    sudo apt-get install -y --no-install-recommends ${missing_pkgs[*]}

EOF
  if [ "${CI:-}" = "true" ]; then
    echo "CI=true: refusing to run the suite without ${missing_tools[*]}" >&2
    exit 1
  fi
  echo "continuing: tests needing ${missing_tools[*]} will be skipped" >&2
  exit 0
fi

# Keep package maintainer scripts from starting redis/nginx/prometheus as services (they would
# take ports 6379/80/9090 that the tests and `make run` use). Only when no policy exists already.
POLICY=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  made_policy=1
fi
cleanup() { if [ "$made_policy" = 1 ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "$@"
}

if ! apt_install "${missing_pkgs[@]}"; then
  echo "apt-get install failed; running apt-get update and retrying" >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update
  apt_install "${missing_pkgs[@]}"
fi

still=()
for entry in "${TOOLS[@]}"; do
  read -r tool _ paths <<<"$entry"
  # shellcheck disable=SC2086
  have "$tool" $paths || still+=("$tool")
done
if [ ${#still[@]} -gt 0 ]; then
  echo "still missing after apt-get install: ${still[*]}" >&2
  exit 1
fi
echo "test tools: installed ${missing_pkgs[*]}"
