"""The table of issue 18's benchmark matrix, from the raw files bench/matrix.sh writes.

    matrix_report.py RES_DIR [--md FILE] [--json FILE]   the table (markdown on stdout too)
    matrix_report.py --half-rate RES_DIR CASE             50 % of the case's median max req/s

Raw files in RES_DIR:
    meta.txt                     "key value" lines: the machine, versions, knobs, load average
    wrk.<case>.<peer>.<round>.txt  wrk --latency output (peer apigate or nginx) followed by
                                   "cpu_ticks T hz HZ wall S" (CPU of the peer's processes) and,
                                   for apigate, "rss root=PID:KiB [child=PID:KiB ...]"
    open.<case>.<apigate|upstream>.json  `apigate loadtest --report` at 50 % of the case's max
    open-rates.txt               "<case> <rate>" lines: the open-loop rate of each case
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

CASES = {
    "proxy": "proxy only",
    "jwt": "+ cached JWT",
    "ratelimit": "+ Redis token bucket by user",
    "metrics": "+ metrics scraped every second",
    "full": "+ access log to a file (full)",
    "full100": "full, 100 routes, 10,000 users",
    "workers2": "full, 2 workers",
}
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
RSS_TARGET_MIB = 80
REDIS_SHOWN_US = 0.5  # below: Redis idle (its own timers), in the cases without a rate limit


def parse_wrk(text: str) -> dict[str, Any] | None:
    """One wrk measurement; None when wrk printed no rate (it failed)."""
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        return None
    d: dict[str, Any] = {"rps": float(m.group(1))}
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        d["p" + q] = float(m.group(1)) * UNIT_MS[m.group(2)] if m else math.nan
    m = re.search(r"(\d+) requests in", text)
    d["n"] = int(m.group(1)) if m else 0
    errs = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errs += int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errs += sum(map(int, m.groups())) if m else 0
    d["errors"] = errs
    m = re.search(r"cpu_ticks (-?\d+) hz (\d+) wall ([\d.]+)", text)
    d["cpu_us"] = int(m.group(1)) / int(m.group(2)) / max(d["n"], 1) * 1e6 if m else math.nan
    m2 = re.search(r"^redis_cpu_ticks (-?\d+)$", text, re.M)
    # Redis' CPU (on the load generator's core) per request, for the cases that use it
    d["redis_us"] = int(m2.group(1)) / int(m.group(2)) / max(d["n"], 1) * 1e6 if m and m2 else math.nan
    m = re.search(r"^rss (.*)$", text, re.M)
    if m:
        procs = [(kind, int(kib)) for kind, _, kib in re.findall(r"(root|child)=(\d+):(\d+)", m.group(1))]
        children = [kib for kind, kib in procs if kind == "child"]
        root = [kib for kind, kib in procs if kind == "root"]
        # one process serves when there are no workers; with workers, the root is their master
        d["rss_workers_kib"] = children or root
        d["rss_master_kib"] = root[0] if children and root else None
    return d


def parse_meta(text: str) -> dict[str, str]:
    meta: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key:
            meta[key] = value.strip()
    return meta


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def _num(x: float, nd: int = 1) -> float | None:
    """JSON has no NaN: missing figures are null."""
    return None if x is None or math.isnan(x) else round(x, nd)


def _peer(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rps": _num(_median([r["rps"] for r in runs]), 0),
        "rps_min": _num(min(r["rps"] for r in runs), 0),
        "rps_max": _num(max(r["rps"] for r in runs), 0),
        "cpu_us_per_req": _num(_median([r["cpu_us"] for r in runs])),
        "redis_cpu_us_per_req": _num(_median([r.get("redis_us", math.nan) for r in runs])),
        "p50_ms": _num(_median([r["p50"] for r in runs]), 2),
        "p99_ms": _num(_median([r["p99"] for r in runs]), 2),
        "errors": sum(r["errors"] for r in runs),
    }


def _open(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    r = json.loads(path.read_text(encoding="utf-8"))
    # the p99 of each second, then their median: a stall of a second or two (other work on a
    # shared machine) moves the run's p99 but not this
    seconds = [
        e["p99_ms"] for e in r.get("timeline", []) if e.get("achieved_rps") and e.get("p99_ms") is not None
    ]
    return {
        "target_rps": r.get("target_rps"),
        "achieved_rps": r.get("achieved_rps"),
        "p50_ms": r["latency_ms"]["p50"],
        "p99_ms": r["latency_ms"]["p99"],
        "p99_1s_median_ms": round(statistics.median(seconds), 3) if seconds else None,
        "errors": r.get("errors", 0),
        "kept_up": bool(r.get("generator", {}).get("kept_up", False)),
    }


def server_view(res: Path, case: str) -> dict[str, dict[str, int]]:
    """Non-2xx statuses from the access logs and rate-limit backend errors from the last scrape,
    summed over the case's closed-loop rounds (logs/access-status.<case>.<round>.txt and
    logs/metrics.<case>.<round>.txt, written by bench/matrix.sh when it stops apigate)."""
    statuses: dict[str, int] = {}
    backend: dict[str, int] = {}
    for f in sorted((res / "logs").glob(f"access-status.{case}.*.txt")):
        if not f.name.split(".")[-2].isdigit():
            continue
        for line in f.read_text(encoding="utf-8").splitlines():
            count, _, status = line.strip().partition(" ")
            if count.isdigit() and status and not status.startswith("2"):
                statuses[status] = statuses.get(status, 0) + int(count)
    for f in sorted((res / "logs").glob(f"metrics.{case}.*.txt")):
        if not f.name.split(".")[-2].isdigit():
            continue
        for line in f.read_text(encoding="utf-8").splitlines():
            m = re.match(r"rate_limit_backend_errors_total(\{[^}]*\})?\s+([\d.e+]+)", line)
            if m and float(m.group(2)) > 0:
                key = m.group(1) or "{}"
                backend[key] = backend.get(key, 0) + int(float(m.group(2)))
    return {"statuses": statuses, "rate_limit_backend_errors": backend}


def case_rounds(res: Path, case: str, peer: str) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for f in res.glob(f"wrk.{case}.{peer}.*.txt"):
        rnd = f.name.split(".")[-2]
        parsed = parse_wrk(f.read_text(encoding="utf-8", errors="replace"))
        if rnd.isdigit() and parsed is not None:
            out[int(rnd)] = parsed
    return out


def half_rate(res: Path, case: str) -> int:
    runs = case_rounds(res, case, "apigate")
    if not runs:
        raise SystemExit(f"no apigate measurement of {case} in {res}")
    return max(1, int(_median([r["rps"] for r in runs.values()]) / 2))


def build(res: Path) -> dict[str, Any]:
    meta = parse_meta((res / "meta.txt").read_text(encoding="utf-8")) if (res / "meta.txt").is_file() else {}
    order = meta.get("cases", " ".join(CASES)).split()
    knobs = dict(kv.split("=", 1) for kv in meta.get("knobs", "").split() if "=" in kv)
    labels = dict(CASES)
    if "ROUTES" in knobs and "USERS" in knobs:
        labels["full100"] = f"full, {int(knobs['ROUTES']):,} routes, {int(knobs['USERS']):,} users"
    cases: list[dict[str, Any]] = []
    notes: list[str] = []
    for case in order:
        ag, ng = case_rounds(res, case, "apigate"), case_rounds(res, case, "nginx")
        if not ag:
            notes.append(f"{case}: no successful apigate measurement")
            continue
        row: dict[str, Any] = {"case": case, "label": labels.get(case, case), "rounds": len(ag)}
        row["apigate"] = _peer(list(ag.values()))
        row["nginx"] = _peer(list(ng.values())) if ng else None
        # the ratio of each round (apigate and nginx measured back to back), then their median
        ratios = [ag[r]["rps"] / ng[r]["rps"] for r in sorted(ag) if r in ng and ng[r]["rps"] > 0]
        row["ratios"] = [round(x, 3) for x in ratios]
        row["x_nginx"] = _num(_median(ratios), 2) if ratios else None
        workers = [kib for r in ag.values() for kib in r.get("rss_workers_kib", [])]
        masters = [r["rss_master_kib"] for r in ag.values() if r.get("rss_master_kib")]
        row["workers"] = max((len(r.get("rss_workers_kib", [])) for r in ag.values()), default=0)
        row["rss_mib_per_worker"] = round(max(workers) / 1024, 1) if workers else None
        row["rss_mib_master"] = round(max(masters) / 1024, 1) if masters else None
        o_ag, o_up = _open(res / f"open.{case}.apigate.json"), _open(res / f"open.{case}.upstream.json")
        row["open_loop"] = None
        if o_ag is not None:
            added = o_ag["p99_ms"] - o_up["p99_ms"] if o_up is not None else None
            added_1s = None
            if (
                o_up is not None
                and o_ag["p99_1s_median_ms"] is not None
                and o_up["p99_1s_median_ms"] is not None
            ):
                added_1s = round(o_ag["p99_1s_median_ms"] - o_up["p99_1s_median_ms"], 3)
            row["open_loop"] = {
                "rate": o_ag["target_rps"],
                "apigate": o_ag,
                "upstream": o_up,
                "added_p99_ms": None if added is None else round(added, 3),
                "added_p99_1s_median_ms": added_1s,
            }
            if added is not None and added < 0:
                notes.append(
                    f"{case}: apigate's open-loop p99 is below the upstream's measured alone "
                    "(noise: other work on the machine during one of the two runs)"
                )
            for who, o in (("apigate", o_ag), ("upstream", o_up)):
                if o is not None and not o["kept_up"]:
                    notes.append(
                        f"{case}: the open-loop generator did not keep up with {who} "
                        f"(achieved {o['achieved_rps']:.0f} of {o['target_rps']:.0f} req/s)"
                    )
                if o is not None and o["errors"]:
                    notes.append(f"{case}: {o['errors']} open-loop errors ({who})")
        row["server_view"] = server_view(res, case)
        if row["apigate"]["errors"] or (row["nginx"] and row["nginx"]["errors"]):
            sv = row["server_view"]
            why = ", ".join(f"status {k}: {v}" for k, v in sorted(sv["statuses"].items()))
            why += "".join(
                f", rate_limit_backend_errors_total{k} {v}"
                for k, v in sv["rate_limit_backend_errors"].items()
            )
            notes.append(
                f"{case}: closed-loop errors: apigate {row['apigate']['errors']}, "
                f"nginx {row['nginx']['errors'] if row['nginx'] else '-'}"
                + (f" ({why.lstrip(', ')})" if why else "")
            )
        cases.append(row)
    by = {c["case"]: c for c in cases}
    summary: dict[str, Any] = {}
    if "workers2" in by and "full" in by:
        summary["workers2_over_full"] = round(
            by["workers2"]["apigate"]["rps"] / by["full"]["apigate"]["rps"], 2
        )
    if "full100" in by and by["full100"]["rss_mib_per_worker"] is not None:
        rss = by["full100"]["rss_mib_per_worker"]
        summary["full100_rss_mib_per_worker"] = rss
        summary["full100_rss_within_target"] = rss <= RSS_TARGET_MIB
        summary["full100_label"] = by["full100"]["label"]
    machine_keys = (
        "date",
        "host",
        "cpu",
        "nproc",
        "kernel",
        "python",
        "nginx",
        "redis",
        "wrk",
        "apigate",
        "commit",
        "loadavg_before",
        "loadavg_after",
    )
    return {
        "issue": 18,
        "machine": {k: meta[k] for k in machine_keys if k in meta},
        "knobs": meta.get("knobs", ""),
        "open_loop_tokens": meta.get("open_loop_tokens", ""),
        "cases": cases,
        "summary": summary,
        "notes": notes,
    }


def _f(x: Any, fmt: str = "{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def render_md(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    out = [
        "# apigate benchmark matrix (issue 18)",
        "",
        f"- machine: {m.get('cpu', '?')}, {m.get('nproc', '?')} CPUs, "
        f"kernel {m.get('kernel', '?')} ({m.get('host', '?')})",
        f"- versions: Python {m.get('python', '?')}, nginx {m.get('nginx', '?')}, "
        f"redis {m.get('redis', '?')}, "
        f"wrk {m.get('wrk', '?')}, {m.get('apigate', 'apigate ?')}, "
        f"git {m.get('commit', '?')}",
        f"- date {m.get('date', '?')}; load average before {m.get('loadavg_before', '?')}, "
        f"after {m.get('loadavg_after', '?')}",
        f"- knobs: {doc['knobs']}",
        "",
        "| case | apigate req/s (min-max) | nginx req/s | x nginx | CPU µs/req "
        "| closed p99 ms apigate / nginx "
        "| open-loop rate | open p50 / p99 ms | upstream p99 ms | gateway-added p99 ms "
        "| gateway-added p99, median 1-s window ms | RSS MiB/worker |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in doc["cases"]:
        a, n, o = c["apigate"], c["nginx"] or {}, c["open_loop"] or {}
        oa, ou = o.get("apigate") or {}, o.get("upstream") or {}
        cpu = _f(a["cpu_us_per_req"], "{:.1f}")
        if (a.get("redis_cpu_us_per_req") or 0) >= REDIS_SHOWN_US:
            cpu += f" (+{a['redis_cpu_us_per_req']:.1f} Redis)"
        rss = _f(c["rss_mib_per_worker"], "{:.1f}")
        if c["workers"] > 1:
            rss += f" x{c['workers']} (+{_f(c['rss_mib_master'], '{:.1f}')} master)"
        out.append(
            f"| {c['label']} | {_f(a['rps'])} ({_f(a['rps_min'])}-{_f(a['rps_max'])}) | {_f(n.get('rps'))} "
            f"| {_f(c['x_nginx'], '{:.2f}')} | {cpu} "
            f"| {_f(a['p99_ms'], '{:.2f}')} / {_f(n.get('p99_ms'), '{:.2f}')} | {_f(o.get('rate'))} "
            f"| {_f(oa.get('p50_ms'), '{:.2f}')} / {_f(oa.get('p99_ms'), '{:.2f}')} "
            f"| {_f(ou.get('p99_ms'), '{:.2f}')} | {_f(o.get('added_p99_ms'), '{:.2f}')} "
            f"| {_f(o.get('added_p99_1s_median_ms'), '{:.2f}')} | {rss} |"
        )
    s = doc["summary"]
    out.append("")
    if "workers2_over_full" in s:
        out.append(
            f"- 2 workers / 1 worker (full): **{s['workers2_over_full']:.2f}** — this 2-core machine "
            "has no core to spare: CPU 0 carries wrk, the upstream and Redis, so the two workers share "
            "both CPUs with them (the issue's ≥ 1.7 target applies where a core is free)."
        )
    if "full100_rss_mib_per_worker" in s:
        verdict = "within" if s["full100_rss_within_target"] else "over"
        out.append(
            f"- RSS per worker, {s['full100_label']}: {s['full100_rss_mib_per_worker']:.1f} MiB "
            f"({verdict} the {RSS_TARGET_MIB} MiB target)."
        )
    out += [
        "- req/s, CPU and closed-loop p99: median over the rounds (wrk -t1 -c64, closed loop); "
        "x nginx: median of each round's ratio to the plain nginx proxy measured right before or after it.",
        "- CPU µs/req: user+system time of every apigate process (all workers) per request; "
        "(+N Redis): Redis' own, on the load generator's core, not counted in apigate's.",
        "- open loop: `apigate loadtest` at 50 % of the case's median max rate, latency from each "
        "request's due time; gateway-added p99 = apigate's open-loop p99 minus the upstream's, "
        "measured directly at the same rate; the median 1-s window variant takes each run's p99 per "
        "second and their median, which a stall of a second or two from other work on the machine "
        "does not move. "
        f"Tokens in the many-user case's open loop: {doc['open_loop_tokens'] or '?'}.",
        "- RSS: VmRSS of each worker at the end of the case (largest over the rounds).",
    ]
    if doc["notes"]:
        out += ["", "Notes:"] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("res", type=Path, help="the run's raw directory (bench/results/matrix-<stamp>)")
    ap.add_argument("case", nargs="?", help="with --half-rate: the case")
    ap.add_argument("--half-rate", action="store_true", help="print 50 %% of the case's median max req/s")
    ap.add_argument("--md", type=Path, help="write the markdown table here")
    ap.add_argument("--json", type=Path, help="write the JSON document here")
    args = ap.parse_args(argv)
    if args.half_rate:
        if not args.case:
            ap.error("--half-rate needs a case")
        print(half_rate(args.res, args.case))
        return 0
    doc = build(args.res)
    md = render_md(doc)
    if args.md:
        args.md.write_text(md, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if not args.md:
        sys.stdout.write(md)
    return 0 if doc["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
