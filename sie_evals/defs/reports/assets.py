"""eval_report: one unpartitioned asset that summarizes the latest result of every eval partition
(read from the instance's materialization and check history) as markdown and a PNG, with the lowest
scoring queries of each cell's latest quality result, and for each cell whose latest run failed, the
failed steps and their errors. Its grid (a row per model:source, a column per task) is the model x task
view of the flat cell partitions. It follows the evals (schedules.py), also a night whose every cell failed."""

import time
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from sie_evals.defs.evals.assets import perf_scores, png_metadata, quality_scores, target_comparison
from sie_evals.defs.evals.checks import EVAL_CHECKS
from sie_evals.defs.evals.partitions import EVAL_CELLS, partition_key
from sie_evals.defs.evals.resources import EvalSettings
from sie_evals.defs.evals.schedules import AFTER_EVALS
from sie_evals.defs.executors import CPU_STEP_TAGS
from sie_evals.lib.core.artifacts import find_shared_file
from sie_evals.lib.core.atomic import atomic_write, atomic_write_text
from sie_evals.lib.gates.keys import EvalKey
from sie_evals.lib.reporting.eval_report import PartitionSummary, report_markdown, report_png
from sie_evals.lib.reporting.regressions import worst_queries, worst_queries_markdown

HISTORY_LIMIT = 30  # materializations per partition shown in the over-time plot
REPORTED_CHECKS = tuple(key for check in EVAL_CHECKS for key in check.check_keys)


def _number(metadata: dict[str, Any], name: str) -> float | None:
    entry = metadata.get(name)
    value = getattr(entry, "value", entry)
    return float(value) if isinstance(value, int | float) else None


def _text(metadata: dict[str, Any], name: str) -> str | None:
    entry = metadata.get(name)
    value = getattr(entry, "value", entry)
    return str(value) if value is not None else None


CHECK_HISTORY_PAGE = 500
CHECK_HISTORY_PAGES = 20  # at most this many pages per check (older states are not "latest" anyway)


def _check_states(instance: dg.DagsterInstance, partitions: list[str]) -> dict[str, dict[str, str]]:
    """partition -> check name -> the latest state of that check there. Reads each check's history
    newest first through the public storage API, paging until every partition has a settled state."""
    states: dict[str, dict[str, str]] = {p: {} for p in partitions}
    for check_key in REPORTED_CHECKS:
        open_partitions = set(partitions)
        cursor: int | None = None
        for _ in range(CHECK_HISTORY_PAGES):
            records = instance.event_log_storage.get_asset_check_execution_history(
                check_key, limit=CHECK_HISTORY_PAGE, cursor=cursor
            )
            for record in records:  # newest first; skip a planned one whose result has not landed
                if record.partition not in open_partitions:
                    continue
                status = record.status.value
                if status == "FAILED":
                    evaluation = record.event.dagster_event.event_specific_data if record.event else None
                    severity = getattr(getattr(evaluation, "severity", None), "value", "ERROR")
                    states[record.partition][check_key.name] = f"FAIL ({severity})"
                    open_partitions.discard(record.partition)
                elif status == "SUCCEEDED":
                    states[record.partition][check_key.name] = "pass"
                    open_partitions.discard(record.partition)
            if len(records) < CHECK_HISTORY_PAGE or not open_partitions:
                break
            cursor = records[-1].id
    return states


def _error_text(error: Any) -> str:
    """`Class: message` of the exception a step raised (a SerializableErrorInfo), not Dagster's wrapper."""
    while error.cause is not None and str(error.cls_name).startswith("Dagster"):
        error = error.cause
    text = error.message.strip()
    qualified, sep, rest = text.partition(": ")
    return f"{error.cls_name}: {rest if sep and qualified.rsplit('.', 1)[-1] == error.cls_name else text}"


def latest_failure(instance: dg.DagsterInstance, partition: str) -> str | None:
    """Why the latest run of a cell failed, when it did: each failed step and its error, or the run's own
    failure (a run whose worker crashed has no failed step). A night whose every cell failed updates no
    eval asset: this is what its report has to say."""
    records = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": partition}), limit=1)
    if not records or records[0].dagster_run.status != dg.DagsterRunStatus.FAILURE:
        return None
    run_id = records[0].dagster_run.run_id
    steps = [e.dagster_event for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
    # a failed blocking check fails its step too; its own state in the report says so (status drift)
    why = [
        f"step {e.step_key}: {_error_text(e.step_failure_data.error)}"
        for e in steps
        if e.step_failure_data.error.cls_name != "DagsterAssetCheckFailedError"
    ]
    if steps and not why:
        return None
    if not why:
        why = [e.message for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)][-1:]
    return f"run {run_id[:8]}, " + "; ".join(why or ["no failure event"])


def gather_summaries(instance: dg.DagsterInstance, eval_keys: list[EvalKey]) -> list[PartitionSummary]:
    summaries = []
    keys = [partition_key(k) for k in eval_keys]
    check_states = _check_states(instance, keys)
    for eval_key, key in zip(eval_keys, keys, strict=True):
        summary = PartitionSummary(str(eval_key), checks=check_states[key], failure=latest_failure(instance, key))
        quality = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("quality_scores"), asset_partitions=[key]), limit=HISTORY_LIMIT
        ).records
        for record in reversed(quality):  # oldest first
            metadata = record.asset_materialization.metadata
            score = _number(metadata, "main_score")
            if score is not None:
                summary.history.append((record.timestamp, score))
        if quality:
            latest = quality[0].asset_materialization.metadata
            summary.main_score = _number(latest, "main_score")
            summary.main_score_name = _text(latest, "main_score_name")
            summary.quality_at = quality[0].timestamp
        perf = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("perf_scores"), asset_partitions=[key]), limit=1
        ).records
        if perf:
            metadata = perf[0].asset_materialization.metadata
            summary.perf = {
                name: v
                for name in ("latency_p50_ms", "latency_p99_ms", "items_per_s", "tokens_per_s")
                if (v := _number(metadata, name)) is not None
            }
            summary.perf_at = perf[0].timestamp
            requests_path = _text(metadata, "requests_path")
            if requests_path and (local := find_shared_file(requests_path)):  # a path, or the shared store's URL
                summary.latencies_ms = pd.read_parquet(local)["latency_ms"].to_numpy(dtype=np.float64)
        summaries.append(summary)
    return summaries


def gather_worst_queries(
    instance: dg.DagsterInstance, eval_keys: list[EvalKey], log: Any = None
) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """model:task:source -> (main score name, its lowest queries) from each cell's latest quality
    materialization whose per-query file is still there."""
    cells = {}
    for eval_key in eval_keys:
        latest = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("quality_scores"), asset_partitions=[partition_key(eval_key)]),
            limit=1,
        ).records
        if not latest:
            continue
        metadata = latest[0].asset_materialization.metadata
        metric, path = _text(metadata, "main_score_name"), _text(metadata, "per_query_path")
        if not (metric and path and (local := find_shared_file(path))):
            continue
        try:
            rows = worst_queries(pd.read_parquet(local), metric)
        except (OSError, ValueError, pa.ArrowException) as err:  # one unreadable file must not sink the report
            if log is not None:
                log.warning(f"{path}: per-query scores of {eval_key} unreadable ({type(err).__name__}: {err})")
            continue
        if rows:
            cells[str(eval_key)] = (metric, rows)
    return cells


@dg.asset(
    group_name="reports",
    deps=[quality_scores, perf_scores, target_comparison],
    kinds={"markdown"},
    op_tags=CPU_STEP_TAGS,
    automation_condition=AFTER_EVALS,
)
def eval_report(context: dg.AssetExecutionContext, settings: EvalSettings) -> dg.MaterializeResult:
    """The latest result and check state of every partition, with history, as markdown + PNG."""
    cells = sorted(EvalKey.parse(p) for p in context.instance.get_dynamic_partitions(EVAL_CELLS))
    summaries = gather_summaries(context.instance, cells)
    now = time.time()
    markdown = (
        report_markdown(summaries, now)
        + "\n\n"
        + worst_queries_markdown(gather_worst_queries(context.instance, cells, context.log))
    )
    folder = settings.results_root() / "reports"
    md_path = folder / "eval_report.md"
    png_path = folder / "eval_report.png"
    atomic_write(png_path, lambda tmp: report_png(summaries, tmp))
    atomic_write_text(md_path, markdown + "\n![metric per partition over time](eval_report.png)\n")
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(markdown),
            "plot": png_metadata(png_path, "eval report"),
            "report_path": dg.MetadataValue.path(str(md_path)),
            "plot_path": dg.MetadataValue.path(str(png_path)),
            "partitions": len(summaries),
            "partitions_ok": sum(s.status == "ok" for s in summaries),
            "partitions_with_failed_checks": sum(s.status.startswith("drift") for s in summaries),
            "partitions_missing": sum(s.status == "missing" for s in summaries),
            "partitions_failed": sum(s.status == "failed" for s in summaries),
        }
    )
