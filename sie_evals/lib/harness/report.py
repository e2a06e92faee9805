"""The eval report: a terminal table (one column per source) and a JSON file with per-query Parquet."""

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sie_evals.lib.core import metric_names
from sie_evals.lib.core.atomic import atomic_write, atomic_write_json
from sie_evals.lib.core.run_conditions import now_iso
from sie_evals.lib.harness.evaluation import SourceResult
from sie_evals.lib.quality.ranking import DEFAULT_RUN_K
from sie_evals.lib.quality.task_types import table_metrics
from sie_evals.lib.tasks import TaskSpec
from sie_evals.lib.tasks.base import TaskDataBase as TaskData

REPORT_FORMAT = 1
PERF_TABLE_METRICS = metric_names.PERF_TABLE_METRICS  # the eval table's perf rows: the metric vocabulary's


def build_report(
    model_id: str,
    profile: str,
    spec: TaskSpec,
    data: TaskData,
    results: list[SourceResult],
    eval_type: str = "quality",
) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "type": eval_type,
        "model": model_id,
        "profile": profile,
        "task": spec.task_id,
        "task_type": spec.type,
        "mteb_task": spec.mteb_name,
        "split": data.split,
        "main_score": spec.rules.main_score if eval_type == "quality" else "latency_p50_ms",
        "dataset": data.describe(),
        "created": now_iso(),
        "sources": {
            r.source: {
                "kind": "computed",
                "main_score": r.main_score,
                "metrics": r.metrics,
                "run_conditions": r.run_conditions,
                **{k: v for k, v in r.extra.items() if k != "perf_result"},
            }
            for r in results
        },
    }


def per_query_path(report_path: Path, source: str) -> Path:
    return report_path.with_name(f"{report_path.stem}.{source}.per_query.parquet")


def run_path(report_path: Path, source: str) -> Path:
    """A retrieval source's ranked results (top k per query: lib/quality/ranking.py), for `sie-bench diff`."""
    return report_path.with_name(f"{report_path.stem}.{source}.run.parquet")


def saturation_png_path(report_path: Path, source: str) -> Path:
    return report_path.with_name(f"{report_path.stem}.{source}.saturation.png")


def latency_png_path(report_path: Path, source: str) -> Path:
    return report_path.with_name(f"{report_path.stem}.{source}.latency.png")


SWEEP_COLUMNS = (
    ("offered/s", "offered_rate_per_s"),
    ("achieved/s", "requests_per_s"),
    ("p50 ms", "latency_p50_ms"),
    ("p99 ms", "latency_p99_ms"),
    ("mean ms", "latency_mean_ms"),
    ("tok/s", "tokens_per_s"),
    ("errors", "errors"),
    ("late", "late"),
    ("dropped", "dropped"),
    ("goodput/s", "goodput_per_s"),
)


def render_sweep(source: str, src: dict[str, Any], console: Console) -> None:
    """One row per sweep point (search probes marked), then the SLO verdict."""
    sweep, slo = src["sweep"], src.get("slo")
    rows = sorted(sweep["rows"], key=lambda r: r["value"])
    columns = [(h, k) for h, k in SWEEP_COLUMNS if any(k in r["metrics"] for r in rows)]
    table = Table(title=f"{source}: sweep over {sweep['param']}")
    table.add_column(sweep["param"], justify="right", no_wrap=True)
    for header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    if slo:
        table.add_column("SLO", justify="left")
    for r in rows:
        m = r["metrics"]
        cells = [_fmt(m.get(k), 0 if k in ("errors", "late", "dropped") else 1) for _, k in columns]
        verdict = [("met" if m.get("slo_met") else "missed")] if slo else []
        table.add_row(f"{r['value']:g}" + (" (search)" if r.get("search") else ""), *cells, *verdict)
    console.print(table)


def render_slo(source: str, slo: dict[str, Any], console: Console) -> None:
    line = f"{source}: SLO {', '.join(slo['slos'])}"
    if "max_rate_at_slo" in slo:
        rate = slo["max_rate_at_slo"]
        line += f"; max_rate_at_slo {'none (the lightest point misses it)' if rate is None else f'{rate:.2f} req/s'}"
        if slo.get("max_concurrency_at_slo") is not None:
            line += f" (max_concurrency_at_slo {slo['max_concurrency_at_slo']:g})"
        if rate is not None and not slo.get("bracketed"):
            line += " - a lower bound: the highest sweep point still meets the SLO"
        elif rate is not None and slo.get("first_failing") is not None:
            line += f"; first failing {slo['param']} {slo['first_failing']:g}"
    else:
        line += "; " + ", ".join(f"{k} {'met' if v else 'missed'}" for k, v in slo["met"].items())
    console.print(Text(line))


def write_report(path: Path, report: dict[str, Any], results: list[SourceResult], run_k: int = DEFAULT_RUN_K) -> None:
    """Per-query (or per-request) Parquet, rankings (top `run_k`) and latency PNGs first, then the JSON
    that points at them, each written atomically."""
    path = Path(path)
    for r in results:
        pq = per_query_path(path, r.source)
        atomic_write(pq, lambda tmp, df=r.per_query: df.to_parquet(tmp, index=False))
        report["sources"][r.source]["per_query_file"] = pq.name
        if r.ranking is not None:
            ranked = run_path(path, r.source)
            frame = r.ranking.frame(run_k)
            atomic_write(ranked, lambda tmp, df=frame: df.to_parquet(tmp, index=False))
            report["sources"][r.source]["run_file"] = ranked.name
            report["sources"][r.source]["run_k"] = run_k
        perf_result = r.extra.get("perf_result")
        if perf_result is not None:
            from sie_evals.lib.perf.load import latency_histogram_png

            png = latency_png_path(path, r.source)
            title = f"{report['model']} via {r.source}: {report.get('variant', '')}"
            atomic_write(png, lambda tmp, pr=perf_result, t=title: latency_histogram_png(pr, tmp, t))
            report["sources"][r.source]["latency_histogram_file"] = png.name
        if r.extra.get("sweep"):
            from sie_evals.lib.perf.plots import saturation_png

            png = saturation_png_path(path, r.source)
            title = f"{report['model']} via {r.source}: {report.get('variant', '')}"
            atomic_write(
                png,
                lambda tmp, sw=r.extra["sweep"], t=title, slo=r.extra.get("slo"): saturation_png(sw, tmp, t, slo),
            )
            report["sources"][r.source]["saturation_plot_file"] = png.name
    atomic_write_json(path, report)


def _fmt(v: float | None, digits: int = 5) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def headline_metrics(task_type: str, metrics: dict[str, Any]) -> list[str]:
    """The metrics a table row or Dagster metadata shows for one result: the task type's table, or for a
    type this project has no table for (MTEB backend) MTEB's top-level numeric metrics."""
    names = table_metrics(task_type)
    if names is None:
        names = [m for m, v in metrics.items() if "." not in m and m != "main_score" and isinstance(v, int | float)]
    return [m for m in names if m in metrics][:20]


def _mteb_rows(report: dict[str, Any], sources: list[str]) -> list[str]:
    """A type this project has no table for (MTEB backend): the main score, then MTEB's top-level metrics."""
    names = [m for s in sources for m in report["sources"][s].get("metrics", {}) if "." not in m and m != "main_score"]
    return list(dict.fromkeys([report["main_score"], *names]))[:20]


def render_table(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(emoji=False, markup=False, highlight=False)
    sources = report.get("source_order") or list(report["sources"])
    console.print(
        Text(f"{report['model']} on {report['task']} ({report['split']}, profile {report['profile']})", "bold")
    )
    table = Table()
    table.add_column("metric")
    for s in sources:
        table.add_column(s, justify="right")
    perf = report.get("type") == "perf"
    rows = table_metrics(report["task_type"]) or _mteb_rows(report, sources)
    if perf:  # server-timing rows only when some source reported them
        rows = [m for m in PERF_TABLE_METRICS if any(m in report["sources"][s]["metrics"] for s in sources)]
    for metric in rows:
        cells = [_fmt(report["sources"][s]["metrics"].get(metric), 2 if perf else 5) for s in sources]
        name = f"{metric} *" if metric == report["main_score"] else metric
        table.add_row(Text(name), *cells)
    for key, label in (("parity_vs_local", "parity vs local"), ("parity_vs_torch", "parity vs torch")):
        if not any(key in report["sources"][s] for s in sources):
            continue
        for stat in ("mean_cosine", "min_cosine"):
            cells = [
                "-" if key not in report["sources"][s] else _fmt(report["sources"][s][key][stat], 6) for s in sources
            ]
            table.add_row(f"{label}: {stat.replace('_', ' ')}", *cells)
    console.print(table)
    ds = report["dataset"]
    console.print(
        Text(
            f"dataset: {', '.join(f'{v} {k}' for k, v in ds['counts'].items())}, "
            f"variant {report.get('variant', ds['variant'])}, "
            f"sha256 {ds['content_hash'][:12]}  (* = main score)"
        )
    )
    for s in sources:
        src = report["sources"][s]
        if src.get("kind") == "computed" and perf:
            c = src["run_conditions"]
            shape = c.get("load_shape") or {}
            if shape.get("mode") == "open":
                how = (
                    f"open loop {shape['rate']:g} req/s {shape['arrival']} arrivals, "
                    f"max in flight {shape['max_concurrency']} ({shape['on_cap']} when full), seed {c.get('seed')}"
                )
            else:
                how = f"concurrency {c['concurrency']}"
            console.print(
                Text(
                    f"{s}: {c['engine_version']}; batch {c['batch_size']}, {how}, "
                    f"{c['trials']} trials (median shown), errors {src['errors']}, load avg {c['load_avg_before']}"
                )
            )
            # perf (lib/perf/overhead.py, trials.py): the generator's own latency, the trials' 95% CIs
            overhead = c.get("generator_overhead") or {}
            if "p50_ms" in overhead and "p99_ms" in overhead:
                console.print(
                    Text(
                        f"{s}: generator overhead p50 {overhead['p50_ms']:.3f} ms, p99 {overhead['p99_ms']:.3f} ms "
                        f"({overhead['method']})"
                    )
                )
            if ci := src.get("trials_ci"):
                spans = ", ".join(f"{k} {v['mean']:.4g} [{v['low']:.4g}, {v['high']:.4g}]" for k, v in ci.items())
                console.print(Text(f"{s}: mean and 95% CI over trials: {spans}"))
            if src.get("sweep"):
                render_sweep(s, src, console)
            if src.get("slo"):
                render_slo(s, src["slo"], console)
            for w in src.get("warnings", []):
                console.print(Text.assemble(("warning:", "yellow"), f" {s}: {w}"))
        elif src.get("kind") == "computed":
            console.print(
                Text(
                    f"{s}: {src['run_conditions']['engine_version']}, embed {src['embed_seconds']}s, "
                    f"cache hits/misses {src['cache']['hits']}/{src['cache']['misses']}, "
                    f"forward passes {src['forward_calls']}"
                    + (f", server log {src['server']['log']}" if (src.get("server") or {}).get("log") else "")
                )
            )
            if mr := src.get("muvera_rescoring"):  # the headline is the rescored ranking; the raw FDE's beside it
                raw = mr["raw_fde_metrics"]
                console.print(
                    Text(
                        f"{s}: MUVERA rescored the top {mr['rescore_k']} FDE candidates with exact MaxSim; raw FDE "
                        + ", ".join(f"{m} {raw[m]:.5f}" for m in ("ndcg_at_10", "recall_at_10") if m in raw)
                        + f"; exact MaxSim top-10 recall in the candidates {mr['maxsim_top10_recall_in_candidates']}"
                    )
                )
        elif not src.get("available"):
            console.print(Text(f"{s}: nothing saved/published for this model, task, profile and data variant"))
        elif (src.get("info") or {}).get("note"):
            console.print(Text(f"{s}: {src['info']['note']}"))
        if src.get("available") and (src.get("info") or {}).get("warning"):  # e.g. another model revision's score
            console.print(Text.assemble(("warning:", "yellow"), f" {s}: {src['info']['warning']}"))
    for check in report.get("checks", []):
        render_verdicts(check, console)
    for line in report.get("saved", []):
        console.print(Text(f"saved {line}"))


def render_verdicts(check: dict[str, Any], console: Console) -> None:
    ref = check["reference"]
    what = f"{check['against']} ({ref['source']}, saved {ref['saved']})" if ref else f"{check['against']} (none saved)"
    table = Table(title=Text(f"{check['source']} vs {what}: {'PASS' if check['passed'] else 'FAIL'}"))
    for col in ("metric", "value", "target", "ratio", "margin", "verdict", "delta 95% CI", "beyond noise"):
        table.add_column(col, justify="left" if col in ("metric", "verdict") else "right")
    for v in check["verdicts"]:
        ci = v.get("delta_interval")
        digits = 5 if v["kind"] == "quality" else 2
        status = {"pass": Text("pass", "green"), "fail": Text("FAIL", "bold red")}.get(v["status"], Text(v["status"]))
        table.add_row(
            Text(v["metric"]),
            _fmt(v["value"], digits),
            _fmt(v["reference"], digits),
            _fmt(v["ratio"], 4),
            f"{v['margin']:g}",
            status,
            Text(f"[{ci['low']:+.4f}, {ci['high']:+.4f}]") if ci else "-",
            ("yes" if ci["beyond_noise"] else "no") if ci else "-",
        )
    console.print(table)
    key = check.get("key") or {}
    where = f"{key.get('task')}, profile {key.get('profile')}, variant {key.get('variant')}" if key else ""
    if ref is None:
        verdict = "FAILS (--require-targets)" if not check["passed"] else "passes WITHOUT checking anything"
        console.print(
            Text.assemble(
                (f"WARN no {check['against'][:-1]}:", "bold yellow"),
                f" nothing saved for {where}; this check {verdict}",
            ),
            soft_wrap=True,
        )
    elif check.get("diagnosis"):
        console.print(Text.assemble(("diagnosis:", "bold red"), f" {check['diagnosis']}"), soft_wrap=True)
