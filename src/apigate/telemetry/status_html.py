"""The status page's HTML: rendered on the server from the /status.json document.

One self-contained page (no external script, style sheet, font or image: it must work in
an air-gapped cluster). The server renders every number, so the page is complete without
JavaScript; a few lines of plain JavaScript then read /status.json every 2 s and update
the cells in place: each cell names its value in `data-p` (a path into the document,
`routes[route=users]/rps`) and its format in `data-f`; the sparklines are redrawn from
each route's `history`. A row that appears or goes (a new target, say) reloads the page.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

REFRESH_MS = 2000
SPARK_W, SPARK_H = 90, 22


def fmt(value: Any, kind: str) -> str:
    """A value as the page shows it; the script's `fmt` mirrors this function."""
    if value is None:
        return "—"
    if kind == "pct":
        return f"{float(value) * 100:.1f}%"
    if kind == "ms":
        return f"{float(value) * 1000:.1f} ms"
    if kind == "yn":
        return "up" if value else "DOWN"
    if kind == "map":
        return ", ".join(f"{k} {fmt(v, 'n')}" for k, v in sorted(value.items())) or "—"
    if kind == "n":
        v = float(value)
        return str(int(v)) if v == int(v) else f"{v:.2f}"
    return str(value)


def spark(points: list[dict[str, float | None]], key: str) -> str:
    """An inline SVG polyline of `key` over `points`, scaled to its own maximum."""
    values = [p.get(key) or 0.0 for p in points]
    top = max(values, default=0.0) or 1.0
    step = SPARK_W / max(len(values) - 1, 1)
    pts = " ".join(
        f"{i * step:.1f},{SPARK_H - 1 - (v / top) * (SPARK_H - 2):.1f}" for i, v in enumerate(values)
    )
    return (
        f'<svg class="spark" data-s="{escape(key)}" width="{SPARK_W}" height="{SPARK_H}" '
        f'viewBox="0 0 {SPARK_W} {SPARK_H}" role="img" aria-label="{escape(key)} over the last minute">'
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{pts}"/></svg>'
    )


def _item(array: str, key: str, value: str) -> str:
    """A path step to the element of `array` whose `key` is `value` (percent-encoded: a
    target such as http://[::1]:80 may hold the path's own separators)."""
    return f"{array}[{key}={quote(str(value), safe='')}]"


def _cell(doc_path: str, value: Any, kind: str = "n", cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<td data-p="{escape(doc_path)}" data-f="{kind}"{klass}>{escape(fmt(value, kind))}</td>'


def _facts(items: list[tuple[str, str | None, Any, str]]) -> str:
    """A line of label/value pairs; a value with a path is updated by the script."""
    out = []
    for label, doc_path, value, kind in items:
        attrs = "" if doc_path is None else f' data-p="{escape(doc_path)}" data-f="{kind}"'
        out.append(f"<dt>{escape(label)}</dt><dd{attrs}>{escape(fmt(value, kind))}</dd>")
    return f'<dl class="facts">{"".join(out)}</dl>'


def _state_class(value: Any) -> str:
    return "bad" if value is False or value == "open" else "warn" if value == "half-open" else ""


def _table(head: list[str], rows: list[str], row_keys: str) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(rows) or f'<tr><td colspan="{len(head)}">none</td></tr>'
    return f'<div class="scroll"><table data-rows="{escape(row_keys)}"><tr>{th}</tr>{body}</table></div>'


def render(doc: dict[str, Any]) -> bytes:
    admin = doc["admin"]
    warn = (
        ""
        if admin["loopback_only"]
        else f'<p class="alert" id="exposed">This admin listener ({escape(admin["address"])}) is reachable '
        f"from beyond loopback{'' if admin['basic_auth'] else ' and has no basic auth'}.</p>"
    )
    facts = [
        ("version", None, doc["version"], "t"),
        ("uptime s", "uptime_s", doc["uptime_s"], "n"),
        ("config", None, doc["config_hash"], "t"),
        ("last reload", "last_reload/result", doc["last_reload"]["result"], "t"),
        ("workers alive", "workers/alive", doc["workers"]["alive"], "n"),
        ("of", None, doc["workers"]["configured"], "n"),
        ("ready", "ready", doc["ready"], "t"),
        ("window s", "window_s", doc["window_s"], "n"),
        ("req/s", "totals/rps", doc["totals"]["rps"], "n"),
        ("5xx", "totals/error_rate", doc["totals"]["error_rate"], "pct"),
    ]
    head = _facts(facts)
    diag = doc["diagnosis"]
    findings = "".join(
        f'<li class="{escape(f["severity"])}"><b>{escape(f["severity"])}</b> {escape(f["title"])}'
        f" <small>{escape(f['cause'])}; runbook: {escape(f['runbook'])}</small></li>"
        for f in diag["findings"]
    )
    diagnosis = (
        f'<h2>Diagnosis: <span data-p="diagnosis/status" data-f="t">{escape(diag["status"])}</span></h2>'
        f'<ul id="findings">{findings}</ul>'
    )
    route_rows = []
    for r in doc["routes"]:
        p = _item("routes", "route", r["route"])
        classes = r["status_classes"]
        route_rows.append(
            f'<tr data-key="{escape(r["route"])}"><th>{escape(r["route"])}</th>'
            + _cell(f"{p}/rps", r["rps"])
            + _cell(f"{p}/error_rate", r["error_rate"], "pct", "bad" if r["error_rate"] > 0 else "")
            + _cell(f"{p}/p50", r["p50"], "ms")
            + _cell(f"{p}/p99", r["p99"], "ms")
            + "".join(_cell(f"{p}/status_classes/{c}", classes[c]) for c in ("2xx", "3xx", "4xx", "5xx"))
            + f'<td data-spark="{escape(p)}">{spark(r["history"], "rps")}{spark(r["history"], "p99")}'
            + "</td></tr>"
        )
    target_rows = []
    for u in doc["upstreams"]:
        for t in u["targets"]:
            service = _item("upstreams", "service", u["service"])
            p = f"{service}/{_item('targets', 'target', t['target'])}"
            pool = t["pool"]
            target_rows.append(
                f'<tr data-key="{escape(u["service"])}/{escape(t["target"])}"><th>{escape(u["service"])}</th>'
                f"<td>{escape(t['target'])}</td>"
                + _cell(f"{service}/active_check", u["active_check"], "yn", _state_class(u["active_check"]))
                + _cell(f"{p}/healthy", t["healthy"], "yn", _state_class(t["healthy"]))
                + _cell(f"{p}/breaker", t["breaker"], "t", _state_class(t["breaker"]))
                + _cell(f"{p}/in_flight", t["in_flight"])
                + _cell(f"{p}/pool/idle", pool.get("idle"))
                + _cell(f"{p}/pool/active", pool.get("active"))
                + _cell(f"{service}/failures", u["failures"], "map")
                + _cell(f"{service}/failures_per_s", u["failures_per_s"])
                + "</tr>"
            )
    sink_rows = [
        f'<tr data-key="{escape(s["sink"])}"><th>{escape(s["sink"])}</th>'
        + "".join(
            _cell(f"{_item('log_sinks', 'sink', s['sink'])}/{k}", s[k])
            for k in ("queue_depth", "spool_bytes", "delivered", "dropped", "errors")
        )
        + "</tr>"
        for s in doc["log_sinks"]
    ]
    rl, au = doc["rate_limiting"], doc["auth"]
    rl_html = (
        "<p>off</p>"
        if not rl["enabled"]
        else _facts(
            [
                ("store", None, rl["store"], "t"),
                ("failure mode", None, rl["failure_mode"], "t"),
                ("reachable", "rate_limiting/store_reachable", rl["store_reachable"], "yn"),
                ("breaker", "rate_limiting/breaker", rl["breaker"], "t"),
                ("rejections", "rate_limiting/rejections", rl["rejections"], "map"),
                ("store errors", "rate_limiting/backend_errors", rl["backend_errors"], "map"),
                ("checks per round trip", "rate_limiting/batch_size", rl["batch_size"], "n"),
            ]
        )
    )
    au_html = (
        "<p>off</p>"
        if not au["enabled"]
        else _facts(
            [
                ("failures", "auth/failures", au["failures"], "map"),
                ("cache hits", "auth/cache_hit_ratio", au["cache_hit_ratio"], "pct"),
            ]
        )
    )
    body = (
        f"<h1>apigate status</h1>{warn}{head}{diagnosis}"
        "<h2>Routes</h2>"
        + _table(
            ["route", "req/s", "5xx", "p50", "p99", "2xx", "3xx", "4xx", "5xx", "req/s · p99"],
            route_rows,
            "routes:route",
        )
        + "<h2>Upstreams</h2>"
        + _table(
            _UPSTREAM_HEAD,
            target_rows,
            "upstreams:service",
        )
        + f"<h2>Rate limiting</h2>{rl_html}<h2>Auth</h2>{au_html}<h2>Log sinks</h2>"
        + _table(
            ["sink", "queue", "spool bytes", "delivered", "dropped", "errors"], sink_rows, "log_sinks:sink"
        )
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no /favicon.ico request (a 404 in the console)
        f"<title>apigate status</title><style>{_CSS}</style></head>"
        f'<body><main id="status" data-keys="{escape(row_keys(doc))}">{body}</main>'
        f'<p class="foot">Updates every {REFRESH_MS // 1000} s (<span id="updated">server-rendered</span>). '
        "Without JavaScript, reload the page.</p>"
        f"<script>{_JS.replace('@REFRESH@', str(REFRESH_MS))}</script></body></html>"
    )
    return page.encode()


_UPSTREAM_HEAD = [
    *("service", "target", "check", "health", "breaker"),
    *("in flight", "idle", "active", "failures", "fail/s"),
]


def row_keys(doc: dict[str, Any]) -> str:
    """Which rows the page has: the script reloads the page when the document's differ."""
    parts = [r["route"] for r in doc["routes"]]
    parts += [f"{u['service']}/{t['target']}" for u in doc["upstreams"] for t in u["targets"]]
    parts += [s["sink"] for s in doc["log_sinks"]]
    return "|".join(parts)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;padding:.5rem 1rem;color:#222;background:#fafafa}
h1{font-size:1.3rem;margin:.3rem 0}h2{font-size:1.05rem;margin:1rem 0 .3rem}
.facts{display:flex;flex-wrap:wrap;gap:.2rem .5rem;margin:0}.facts dt{font-weight:600}.facts dd{margin:0}
.scroll{overflow-x:auto}table{border-collapse:collapse;min-width:100%}
th,td{padding:.2rem .4rem;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th:first-child,td:nth-child(2){text-align:left}.bad{color:#b00;font-weight:600}.warn{color:#a60}
.alert{background:#fee;border:1px solid #b00;padding:.4rem}.spark{vertical-align:middle;margin-right:.3rem}
li.SEV1,li.SEV2{color:#b00}small{color:#555}.foot{color:#666;font-size:.8rem}
"""

# fmt() above, in JavaScript; get() resolves a data-p path; keys() mirrors row_keys().
_JS = r"""
(function(){
var SW=90,SH=22,REFRESH=@REFRESH@;
function fmt(v,k){if(v===null||v===undefined)return"\u2014";
 if(k==="pct")return(v*100).toFixed(1)+"%";
 if(k==="ms")return(v*1000).toFixed(1)+" ms";
 if(k==="yn")return v?"up":"DOWN";
 if(k==="map"){var ks=Object.keys(v).sort();
  return ks.length?ks.map(function(x){return x+" "+fmt(v[x],"n")}).join(", "):"\u2014"}
 if(k==="n")return Number.isInteger(v)?String(v):v.toFixed(2);
 return String(v)}
function get(d,p){var o=d;p.split("/").forEach(function(s){if(o===undefined||o===null)return;
 var m=/^(\w+)\[(\w+)=(.*)\]$/.exec(s);
 o=m?(o[m[1]]||[]).find(function(e){return String(e[m[2]])===decodeURIComponent(m[3])}):o[s]});
 return o}
function keys(d){var k=d.routes.map(function(r){return r.route});
 d.upstreams.forEach(function(u){u.targets.forEach(function(t){k.push(u.service+"/"+t.target)})});
 d.log_sinks.forEach(function(s){k.push(s.sink)});return k.join("|")}
function pts(h,k){var vs=h.map(function(p){return p[k]||0});
 var top=Math.max.apply(null,vs.concat([0]))||1,st=SW/Math.max(vs.length-1,1);
 return vs.map(function(v,i){return(i*st).toFixed(1)+","+(SH-1-(v/top)*(SH-2)).toFixed(1)}).join(" ")}
function cls(v){return v===false||v==="open"?"bad":v==="half-open"?"warn":""}
function finding(f){var li=document.createElement("li"),b=document.createElement("b");
 var s=document.createElement("small");li.className=f.severity;b.textContent=f.severity;
 s.textContent=f.cause+"; runbook: "+f.runbook;li.appendChild(b);
 li.appendChild(document.createTextNode(" "+f.title+" "));li.appendChild(s);return li}
function apply(d){
 if(document.getElementById("status").getAttribute("data-keys")!==keys(d)){location.reload();return}
 document.querySelectorAll("[data-p]").forEach(function(el){
  var p=el.getAttribute("data-p"),f=el.getAttribute("data-f"),v=get(d,p);el.textContent=fmt(v,f);
  if(f==="yn"||/\/breaker$/.test(p))el.className=cls(v)});
 document.querySelectorAll("[data-spark]").forEach(function(td){var r=get(d,td.getAttribute("data-spark"));
  if(r)td.querySelectorAll("svg").forEach(function(svg){
   svg.firstChild.setAttribute("points",pts(r.history,svg.getAttribute("data-s")))})});
 var ul=document.getElementById("findings");while(ul.firstChild)ul.removeChild(ul.firstChild);
 d.diagnosis.findings.forEach(function(f){ul.appendChild(finding(f))});
 document.getElementById("updated").textContent="updated "+new Date().toLocaleTimeString()}
function tick(){fetch("status.json",{cache:"no-store",credentials:"same-origin"}).then(function(r){
  if(!r.ok)throw new Error("HTTP "+r.status);return r.json()}).then(apply).catch(function(e){
  document.getElementById("updated").textContent="update failed: "+e.message}).then(function(){
  setTimeout(tick,REFRESH)})}
setTimeout(tick,REFRESH)})();
"""
