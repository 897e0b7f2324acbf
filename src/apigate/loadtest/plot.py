"""`--plot FILE.png`: target vs achieved req/s and p99 over time, the breaking point marked."""

from __future__ import annotations

from typing import Any


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    # each entry covers [t, t+1): steps drawn from t, with one more point closing the last second
    t = [e["t"] for e in timeline] + [len(timeline)]

    def series(key: str) -> list[float]:
        values = [float(e[key]) for e in timeline]
        return [*values, values[-1]] if values else [0.0]

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5))
    top.step(t, series("target_rps"), where="post", label="target req/s", color="tab:gray", linewidth=2.5)
    top.step(t, series("achieved_rps"), where="post", label="achieved req/s", color="tab:blue")
    errors = series("errors")
    if any(errors):
        top.step(t, errors, where="post", label="errors/s", color="tab:red")
    top.set_ylabel("requests per second")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    limit = report["criteria"]["p99_ms"]["limit"]
    bottom.step(t, series("p99_ms"), where="post", label="p99 (from due time)", color="tab:purple")
    bottom.axhline(limit, color="tab:red", linestyle="--", linewidth=1, label=f"criterion {limit:g} ms")
    bottom.set_ylabel("p99 latency, ms")
    bottom.set_xlabel("seconds since start")
    if any(e["p99_ms"] > 0 for e in timeline):
        bottom.set_yscale("log")
    bottom.grid(alpha=0.3, which="both")
    bp = report.get("breaking_point")
    if bp is not None:
        x = bp["t"]
        for ax in (top, bottom):
            ax.axvline(x, color="tab:red", linewidth=1.5)
        top.annotate(
            f"breaking point: {bp['target_rps']} req/s\n{bp['reason']}",
            xy=(x, bp["target_rps"]),
            xytext=(8, -30),
            textcoords="offset points",
            color="tab:red",
            fontsize=9,
        )
    bottom.legend(loc="upper left")
    verdict = "PASS" if report["criteria"]["passed"] else "FAIL"
    fig.suptitle(
        f"{report['method']} {report['url']} - {report['profile']['description']} - {verdict}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
