"""The cross-partition eval report: the latest result of every model:task:source, its check states
and its history, as markdown (a model x task matrix of statuses, then a table) and a PNG (main score
over time; latest latency distribution).

Pure: the Dagster asset gathers `PartitionSummary` objects from the instance and calls these."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from sie_evals.lib.gates.diff import md_cell
from sie_evals.lib.gates.keys import EvalKey


@dataclass
class PartitionSummary:
    key: str
    main_score_name: str | None = None
    main_score: float | None = None
    quality_at: float | None = None  # unix time of the latest quality materialization
    perf: dict[str, float] = field(default_factory=dict)  # latest perf metrics
    perf_at: float | None = None
    checks: dict[str, str] = field(default_factory=dict)  # check name -> "pass" | "FAIL (ERROR)" | ...
    history: list[tuple[float, float]] = field(default_factory=list)  # (unix time, main score), oldest first
    latencies_ms: np.ndarray | None = None  # per-request latencies of the latest perf run
    failure: str | None = None  # the latest run of the cell failed: its run, failed steps and errors

    @property
    def status(self) -> str:
        if self.failure is not None:  # whatever older result there is, the last attempt failed
            return "failed"
        if self.main_score is None and not self.perf:
            return "missing"
        failed = [name for name, state in self.checks.items() if state.startswith("FAIL")]
        return "drift: " + ", ".join(failed) if failed else "ok"


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def matrix_markdown(summaries: list[PartitionSummary]) -> list[str]:
    """Model (`model:source`, as the Dagster rows) x task: each cell's status and main score, `·` where no
    config declares the cell."""
    cells = {}
    for s in summaries:
        key = EvalKey.parse(s.key)
        cells[(f"{key.model}:{key.source}", key.task)] = s
    rows, tasks = sorted({r for r, _ in cells}), sorted({t for _, t in cells})
    lines = ["| model:source | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for row in rows:
        shown = []
        for task in tasks:
            s = cells.get((row, task))
            if s is None:
                shown.append("·")
            else:
                status = "drift" if s.status.startswith("drift") else s.status
                shown.append(status if s.main_score is None else f"{status} {_num(s.main_score)}")
        lines.append(f"| {row} | " + " | ".join(shown) + " |")
    return lines


def report_markdown(summaries: list[PartitionSummary], generated_at: float) -> str:
    lines = [
        f"# sie-evals report ({_when(generated_at)})",
        "",
        f"{len(summaries)} partitions; "
        f"{sum(s.status == 'ok' for s in summaries)} ok, "
        f"{sum(s.status.startswith('drift') for s in summaries)} with failed checks, "
        f"{sum(s.status == 'missing' for s in summaries)} never materialized, "
        f"{sum(s.status == 'failed' for s in summaries)} failed in their latest run.",
        "",
        *matrix_markdown(summaries),
        "",
        "| partition | main score | value | p50 ms | p99 ms | items/s | checks | status | updated |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        checks = ", ".join(f"{name}: {state}" for name, state in sorted(s.checks.items())) or "-"
        updated = max((t for t in (s.quality_at, s.perf_at) if t is not None), default=None)
        lines.append(
            f"| {s.key} | {s.main_score_name or '-'} | {_num(s.main_score, 5)} "
            f"| {_num(s.perf.get('latency_p50_ms'), 2)} | {_num(s.perf.get('latency_p99_ms'), 2)} "
            f"| {_num(s.perf.get('items_per_s'), 1)} | {checks} | {s.status} | {_when(updated)} |"
        )
    failed = [s for s in summaries if s.failure is not None]
    if failed:
        lines += ["", "## Failed in their latest run", ""]
        lines += [f"- {md_cell(s.key)}: {md_cell(s.failure)}" for s in failed]
    return "\n".join(lines) + "\n"


def report_png(summaries: list[PartitionSummary], path: Path) -> None:
    """Left: main score per partition over time. Right: latest latency distribution per partition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), dpi=100)
    for s in summaries:
        if s.history:
            times = [datetime.fromtimestamp(t, UTC) for t, _ in s.history]
            left.plot(times, [v for _, v in s.history], marker="o", label=f"{s.key} ({s.main_score_name})")
    left.set_title("main score per partition over time")
    left.set_xlabel("materialized at (UTC)")
    left.set_ylabel("score")
    if any(s.history for s in summaries):
        left.legend(fontsize=7)
    fig.autofmt_xdate()
    with_latency = [s for s in summaries if s.latencies_ms is not None and len(s.latencies_ms)]
    if with_latency:
        right.boxplot([s.latencies_ms for s in with_latency], orientation="horizontal", showfliers=True)
        right.set_yticks(range(1, len(with_latency) + 1), [s.key for s in with_latency], fontsize=7)
    else:
        right.text(0.5, 0.5, "no perf runs yet", ha="center", va="center", transform=right.transAxes)
    right.set_title("request latency, latest perf run")
    right.set_xlabel("ms")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
