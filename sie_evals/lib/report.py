"""The eval report: a terminal table (one column per source) and a JSON file with per-query Parquet."""

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sie_evals.lib.atomic import atomic_write, atomic_write_json
from sie_evals.lib.evaluation import SourceResult
from sie_evals.lib.run_conditions import now_iso
from sie_evals.lib.tasks import RetrievalData, TaskSpec

REPORT_FORMAT = 1
TABLE_METRICS = (
    "ndcg_at_10",
    "map_at_10",
    "recall_at_10",
    "precision_at_10",
    "mrr_at_10",
    "ndcg_at_1",
    "ndcg_at_100",
    "map_at_100",
    "recall_at_100",
    "recall_at_1000",
)


def build_report(
    model_id: str, profile: str, spec: TaskSpec, data: RetrievalData, results: list[SourceResult]
) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "type": "quality",
        "model": model_id,
        "profile": profile,
        "task": spec.task_id,
        "task_type": spec.type,
        "mteb_task": spec.mteb_name,
        "split": data.split,
        "main_score": spec.rules.main_score,
        "dataset": data.describe(),
        "created": now_iso(),
        "sources": {
            r.source: {
                "main_score": r.main_score,
                "metrics": r.metrics,
                "run_conditions": r.run_conditions,
                **r.extra,
            }
            for r in results
        },
    }


def per_query_path(report_path: Path, source: str) -> Path:
    return report_path.with_name(f"{report_path.stem}.{source}.per_query.parquet")


def write_report(path: Path, report: dict[str, Any], results: list[SourceResult]) -> None:
    """Per-query Parquet files first, then the JSON that points at them (each written atomically)."""
    path = Path(path)
    for r in results:
        pq = per_query_path(path, r.source)
        atomic_write(pq, lambda tmp, df=r.per_query: df.to_parquet(tmp, index=False))
        report["sources"][r.source]["per_query_file"] = pq.name
    atomic_write_json(path, report)


def render_table(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    sources = list(report["sources"])
    title = f"{report['model']} on {report['task']} ({report['split']}, profile {report['profile']})"
    console.print(f"[bold]{title}[/]")
    table = Table()
    table.add_column("metric")
    for s in sources:
        table.add_column(s, justify="right")
    for metric in TABLE_METRICS:
        cells = []
        for s in sources:
            v = report["sources"][s]["metrics"].get(metric)
            cells.append("-" if v is None else f"{v:.5f}")
        name = f"{metric} *" if metric == report["main_score"] else metric
        table.add_row(name, *cells)
    console.print(table)
    ds = report["dataset"]
    console.print(
        f"dataset: {ds['counts']['queries']} queries, {ds['counts']['corpus']} docs, "
        f"{ds['counts']['qrels']} qrels, sha256 {ds['content_hash'][:12]}  (* = main score)"
    )
    for s in sources:
        src = report["sources"][s]
        console.print(
            f"{s}: {src['run_conditions']['engine_version']}, embed {src['embed_seconds']}s, "
            f"cache hits/misses {src['cache']['hits']}/{src['cache']['misses']}, forward passes {src['forward_calls']}"
        )
