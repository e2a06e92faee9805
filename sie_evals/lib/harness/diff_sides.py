"""`sie-bench diff`'s sides: an eval report (`report.json[#SOURCE]`) or a saved target or measurement, read back
with its per-query scores, ranking and run conditions, and the texts of the data it was scored on."""

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.parquet import read_parquet_table
from sie_evals.lib.core.text_files import read_utf8
from sie_evals.lib.gates.diff import DiffSide, TaskTexts
from sie_evals.lib.gates.saved_results import load_per_query, load_run, parse_saved_ref, saved_entry
from sie_evals.lib.quality.ranking import read_run
from sie_evals.lib.tasks import resolve_task


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = read_utf8(path)
    except OSError as err:
        raise InputError(f"{path}: cannot read the report: {err.strerror}") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}:{err.colno}: not a JSON report: {err.msg}") from None
    missing = [k for k in ("task", "split", "main_score", "sources") if not isinstance(report, dict) or k not in report]
    if missing or not isinstance(report["sources"], dict):
        field = missing[0] if missing else "sources"
        raise InputError(f"{path}: not a sie-bench eval report (field {field!r} missing or not a mapping; see eval -o)")
    return report


def read_per_query(file: Path, report: Path) -> pd.DataFrame:
    try:
        return read_parquet_table(file, {"query_id": "id"}, "per-query scores")
    except FileNotFoundError:
        raise InputError(f"{file}: the per-query scores {report} names are missing") from None


def _with_profile(conditions: Any, profile_settings: Any) -> dict[str, Any] | None:
    if not isinstance(conditions, dict):
        return None
    return {**conditions, "profile_settings": profile_settings} if isinstance(profile_settings, dict) else conditions


def read_report_side(path: Path, source: str | None = None) -> DiffSide:
    """One computed source of an `eval -o` report (the first, unless `source`), with its per-query
    scores and, when the report kept it, its ranking. InputError naming the file when anything is off."""
    path = Path(path)
    report = _read_json(path)
    if report.get("type") == "perf":
        raise InputError(f"{path}: a perf report has per-request timings, no per-query scores to diff")
    computed = [s for s, v in report["sources"].items() if isinstance(v, dict) and v.get("kind") == "computed"]
    source = source or (computed[0] if computed else None)
    if source not in computed:
        raise InputError(f"{path}: no computed source {source!r} (computed: {', '.join(computed) or 'none'})")
    src = report["sources"][source]
    if not src.get("per_query_file"):
        raise InputError(f"{path}: source {source!r} has no per-query data (field 'per_query_file')")
    per_query = read_per_query(path.parent / str(src["per_query_file"]), path)
    ranking = read_run(path.parent / str(src["run_file"])) if src.get("run_file") else None
    dataset = report.get("dataset") if isinstance(report.get("dataset"), dict) else {}
    return DiffSide(
        name=f"{path}#{source}" if len(computed) > 1 else str(path),
        task=str(report["task"]),
        split=str(report["split"]),
        variant=str(dataset.get("variant", report["split"])),
        main_score=str(report["main_score"]),
        task_type=str(report.get("task_type", "")),
        metrics=src.get("metrics") or {},
        per_query=per_query,
        ranking=ranking,
        conditions=_with_profile(src.get("run_conditions"), report.get("profile_settings")),
        dataset_hash=dataset.get("content_hash"),
        subset=dataset.get("subset") if isinstance(dataset.get("subset"), dict) else None,
    )


def _slice_subset(slice_: str | None, ref: str) -> dict[str, int] | None:
    """`q20-c300` -> {"limit_queries": 20, "corpus_size": 300} (keys.data_slice's inverse)."""
    if slice_ is None:
        return None
    m = re.fullmatch(r"q(\d+)-c(\d+)", slice_)
    if not m:
        raise InputError(f"{ref}: data slice {slice_!r} is not q<N>-c<M>")
    return {"limit_queries": int(m[1]), "corpus_size": int(m[2])}


def read_saved_side(ref: str, configs_dir: Path | None) -> DiffSide:
    """A saved target or measurement (saved_results.parse_saved_ref) with its per-query scores."""
    config, entry = saved_entry(ref, configs_dir)
    _, _, task, _, variant, _ = parse_saved_ref(ref)
    per_query = load_per_query(config, entry)
    if per_query is None or "query_id" not in per_query.columns:
        raise InputError(f"{ref}: saved without per-query scores in {config.path} (nothing to diff per query)")
    spec = resolve_task(task)
    split, _, slice_ = variant.partition("@")
    return DiffSide(
        name=ref,
        task=task,
        split=split,
        variant=variant,
        main_score=spec.rules.main_score,
        task_type=spec.type,
        metrics=dict(entry.metrics),
        per_query=per_query.astype({"query_id": str}),
        ranking=load_run(config, entry),
        conditions=entry.conditions,
        dataset_hash=entry.conditions.get("dataset_hash"),
        subset=_slice_subset(slice_ or None, ref),
    )


def read_diff_side(arg: str, configs_dir: Path | None = None) -> DiffSide:
    """`report.json`, `report.json#SOURCE`, or a saved result `CONFIG#targets/...` / `CONFIG#measurements/...`."""
    base, _, fragment = arg.partition("#")
    if fragment.startswith(("targets/", "measurements/")):
        return read_saved_side(arg, configs_dir)
    return read_report_side(Path(base), fragment or None)


def task_texts(side: DiffSide, data_root: Path | None = None) -> TaskTexts | None:
    """The query and document texts and qrels of the data `side` was scored on (retrieval only)."""
    from sie_evals.lib.harness.evaluation import DataOptions, load_task
    from sie_evals.lib.tasks import RetrievalData

    subset = side.subset or {}
    opts = DataOptions(side.split, subset.get("limit_queries"), subset.get("corpus_size"), data_root)
    _, data = load_task(side.task, opts)
    if not isinstance(data, RetrievalData):
        return None
    return TaskTexts(
        dict(zip(data.query_ids, data.query_texts, strict=True)),
        dict(zip(data.corpus_ids, data.corpus_texts, strict=True)),
        data.qrels,
    )
