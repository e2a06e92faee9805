"""Saturation plot of a sweep: achieved throughput and p50/p99 latency against the offered load."""

from pathlib import Path
from typing import Any


def saturation_png(sweep: dict[str, Any], path: Path | str, title: str, slo: dict[str, Any] | None = None) -> None:
    """sweep = {"param": ..., "rows": [{"value", "metrics", ...}]} as evaluate_perf_source reports it.
    x: the offered load (target rate for a rate sweep, else the swept value); left axis: achieved
    requests/s (and the offered rate on a rate sweep); right axis (log): p50 and p99 latency, with the
    latency SLO thresholds and the knee (max rate/concurrency at SLO) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    param = sweep["param"]
    rows = sorted(sweep["rows"], key=lambda r: r["value"])
    x = [r["value"] for r in rows]
    achieved = [r["metrics"].get("requests_per_s", float("nan")) for r in rows]
    p50 = [r["metrics"].get("latency_p50_ms", float("nan")) for r in rows]
    p99 = [r["metrics"].get("latency_p99_ms", float("nan")) for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    ax.plot(x, achieved, "o-", color="tab:blue", label="achieved req/s")
    if param == "rate":
        ax.plot(x, x, ":", color="tab:blue", alpha=0.5, label="offered req/s")
    searched = [r for r in rows if r.get("search")]
    if searched:
        ax.plot(
            [r["value"] for r in searched],
            [r["metrics"].get("requests_per_s") for r in searched],
            "x",
            color="tab:blue",
            label="SLO search probes",
        )
    ax.set_xlabel(
        {"rate": "offered load (requests/s)", "concurrency": "offered load (concurrent clients)"}.get(param, param)
    )
    ax.set_ylabel("achieved throughput (requests/s)", color="tab:blue")
    lat = ax.twinx()
    lat.plot(x, p50, "s--", color="tab:green", label="p50 latency")
    lat.plot(x, p99, "^--", color="tab:red", label="p99 latency")
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms)")
    for text in (slo or {}).get("slos", []):
        if "_ms" in text:
            threshold = float(text.split("=")[-1].lstrip("<>"))
            lat.axhline(threshold, color="tab:red", alpha=0.4, linewidth=1, label=f"SLO {text}")
    knee = (
        None
        if not slo
        else (
            slo.get("max_concurrency_at_slo")
            if param == "concurrency"
            else slo.get("max_rate_at_slo")
            if param == "rate"
            else None
        )
    )
    if knee is not None:
        ax.axvline(knee, color="black", alpha=0.5, linestyle="-.", label=f"max at SLO: {knee:g}")
    handles = ax.get_legend_handles_labels()
    handles2 = lat.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
