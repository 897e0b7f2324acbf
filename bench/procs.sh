# shellcheck shell=bash
# bench/procs.sh -- sourced by bench/run.sh and bench/matrix.sh: process bookkeeping by pid only.
#
# Every server a run starts goes through `start NAME CPUS CMD...`, which records its pid and start
# time in $PIDFILE (one file per run: bench/results/.running.<run pid>.pids). `stop_recorded`
# stops exactly those processes (and their descendants), never by name; an entry whose start time
# no longer matches is a reused pid and is left alone. `stop_leftovers` stops the servers of
# earlier runs that were interrupted before they could clean up (their run's pid is gone).
# The caller sets PIDFILE and LOGS (where `start` writes NAME.log) before calling these.

# shellcheck disable=SC2034  # PID_OF is read by the scripts that source this file
declare -A PID_OF=()

# /proc/<pid>/stat fields after the "(comm) " part: state is 1st, utime 12th, stime 13th, starttime 20th.
stat_field() { awk -v f="$2" '{sub(/^.*\) /, ""); print $f}' "/proc/$1/stat" 2>/dev/null || true; }
alive() {
  local st
  st=$(stat_field "$1" 1)
  [ -n "$st" ] && [ "$st" != Z ]
}
# the given pids and all their descendants
tree() {
  ps -e -o pid=,ppid= | awk -v roots="$*" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { par[$1] = $2 }
    END { do { ch = 0; for (p in par) if (!(p in keep) && (par[p] in keep)) { keep[p] = 1; ch = 1 } } while (ch)
          for (p in keep) print p }'
}
cpu_ticks() { # utime+stime of the given pids and their descendants (all threads)
  local p total=0 t
  for p in $(tree "$@"); do
    t=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || true)
    total=$((total + ${t:-0}))
  done
  echo "$total"
}
record_pid() { echo "$1 $2 $(stat_field "$2" 20)" >>"$PIDFILE"; }
# stop_tree PID...: TERM to the given pids, up to 5 s for them and their descendants to exit, then KILL
stop_tree() {
  local all=() p any
  mapfile -t all < <(tree "$@")
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 50); do
    any=0
    for p in "${all[@]}"; do alive "$p" && any=1; done
    [ "$any" = 0 ] && break
    sleep 0.1
  done
  for p in "${all[@]}"; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
  return 0
}
stop_recorded() { # [FILE]: the servers recorded there (default: this run's)
  local file=${1:-$PIDFILE}
  [ -f "$file" ] || return 0
  local name pid st roots=()
  while read -r name pid st; do
    [ -n "${pid:-}" ] || continue
    if alive "$pid" && [ "$(stat_field "$pid" 20)" = "$st" ]; then roots+=("$pid"); fi
  done <"$file"
  if [ ${#roots[@]} -gt 0 ]; then stop_tree "${roots[@]}"; fi
  rm -f "$file"
}
# Leftovers of interrupted earlier runs (pid files in DIR), found by their run's pid being gone (a
# run still going keeps its servers); each server only if its pid and start time still match.
stop_leftovers() { # DIR
  local f owner
  for f in "$1"/.running.*.pids; do
    [ -e "$f" ] || continue
    owner=${f##*/.running.}
    owner=${owner%.pids}
    if [ "$owner" = pids ] || ! alive "$owner"; then stop_recorded "$f"; fi # 'pids': the old shared file
  done
}
# start NAME CPUS CMD...: exec'ed through taskset, so $! is the server's own pid
start() {
  local name=$1 cpu=$2
  shift 2
  taskset -c "$cpu" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  PID_OF[$name]=$!
  record_pid "$name" "$!"
}
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }
wait_port() { # port pid: until the port listens (15 s), or the process died
  for _ in $(seq 150); do
    port_busy "$1" && return 0
    alive "$2" || return 1
    sleep 0.1
  done
  return 1
}
