"""One `sie-bench eval` invocation as a function: compute sources, reference sources, drift checks
and saves. Returns everything the CLI prints; prints nothing itself."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sie_evals.lib.config.model_config import ModelConfig, Runtime, find_model_config
from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import InputError, UnknownNameError
from sie_evals.lib.core.sources import ALL_SOURCES, COMPUTE_SOURCES, REFERENCE_SOURCES
from sie_evals.lib.engines.cache import EmbeddingCache
from sie_evals.lib.gates.drift import CheckResult, ReferenceColumn, check_source, reference
from sie_evals.lib.gates.saved_results import append_measurement, save_target
from sie_evals.lib.gates.thresholds import Against
from sie_evals.lib.harness.evaluation import (
    DataOptions,
    EngineOptions,
    SourceResult,
    evaluate_perf_source,
    evaluate_source,
    load_task,
    parity_vs_torch,
    perf_variant,
)
from sie_evals.lib.harness.report import build_report
from sie_evals.lib.perf.load import PERF_TARGET_METRICS, LoadSpec
from sie_evals.lib.quality.parity import parity_against
from sie_evals.lib.quality.scoring import TaskData
from sie_evals.lib.tasks import TaskSpec


@dataclass(frozen=True)
class EvalRequest:
    model: str
    task: str
    sources: tuple[str, ...] = ("local",)
    profile: str = "default"
    data: DataOptions = field(default_factory=DataOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)
    cache_dir: Path | None = None
    check_targets: bool = False
    check_measurements: bool = False
    require_targets: bool = False
    save_targets: str | None = None
    save_measurements: str | None = None
    eval_type: str = "quality"  # quality | perf
    load: LoadSpec = field(default_factory=LoadSpec)
    workload: str = "corpus"


@dataclass
class EvalOutcome:
    config: ModelConfig
    spec: TaskSpec
    data: TaskData
    variant: str
    results: list[SourceResult]
    references: list[ReferenceColumn]
    checks: list[CheckResult]
    report: dict[str, Any]
    saved: list[str]

    @property
    def drift(self) -> bool:
        return not all(c.passed for c in self.checks)


def parse_sources(sources: str) -> tuple[str, ...]:
    names = [s.strip() for s in sources.split(",") if s.strip()]
    if not names:
        raise InputError("--sources is empty")
    for s in names:
        if s not in ALL_SOURCES:
            raise UnknownNameError("source", s, list(ALL_SOURCES))
    if len(set(names)) != len(names):
        raise InputError(f"--sources lists a source twice: {sources}")
    return tuple(names)


def _validate(req: EvalRequest) -> None:
    for flag, source in (("--save-targets", req.save_targets), ("--save-measurements", req.save_measurements)):
        if source is None:
            continue
        if source not in req.sources:
            raise InputError(f"{flag} {source}: that source is not in --sources ({', '.join(req.sources)})")
        if source in ("targets", "measurements"):
            raise InputError(f"{flag} {source}: saved results cannot be saved again as results")
    if (req.check_targets or req.check_measurements) and not any(s in COMPUTE_SOURCES for s in req.sources):
        raise InputError("--check-targets/--check-measurements need a computed source in --sources (e.g. local)")


def _conditions_summary(result: SourceResult) -> dict[str, Any]:
    rc = result.run_conditions
    hw = rc["hardware"]
    return {
        "engine": rc["engine"],
        "engine_version": rc["engine_version"],
        "model_revision": rc["model_revision"],
        "weights": rc["weights"],
        "profile": rc["profile"],
        "dtype": rc["dtype"],
        "batch_size": rc["batch_size"],
        "concurrency": rc.get("concurrency"),
        "threads": rc["threads"],
        "workload": rc.get("workload"),
        "hardware": {k: hw[k] for k in ("cpu", "cpu_count", "gpus", "host")},
        "load_avg": rc.get("load_avg_before", hw.get("load_avg_1m")),
        "harness_version": rc["software"]["sie_evals"],
        "dataset_hash": rc["dataset"]["content_hash"],
        "split": rc["dataset"]["split"],
        "subset": rc["dataset"]["subset"],
        "date": rc["date"],
    }


def _to_save(
    source: str,
    results: dict[str, SourceResult],
    refs: dict[str, ReferenceColumn],
    spec: TaskSpec,
    data: TaskData,
    target_metrics: tuple[str, ...],
) -> tuple[dict[str, float], dict[str, Any], pd.DataFrame | None]:
    if source in results:
        r = results[source]
        metrics = {m: r.metrics[m] for m in target_metrics if m in r.metrics}
        if not metrics:
            raise InputError(f"{source} produced none of the metrics to save ({', '.join(target_metrics)})")
        per_query = r.per_query if "query_id" in r.per_query.columns else None  # perf rows are requests
        return metrics, _conditions_summary(r), per_query
    if source == "benchmark":
        if data.subset:
            raise InputError("cannot save benchmark values for a subset: published values are for the full split")
        ref = refs.get("benchmark")
        if ref is None:
            raise InputError(f"no published quality score for this model on {spec.task_id} ({data.split})")
        return dict(ref.metrics), {"published": {k: v for k, v in ref.info.items() if v is not None}}, None
    raise InputError(f"cannot save source {source!r}")


def run_eval(req: EvalRequest) -> EvalOutcome:
    _validate(req)
    config = find_model_config(req.model, paths.model_configs_dir())
    profile = config.resolve_profile(req.profile)
    spec, data = load_task(req.task, req.data)
    compute = [s for s in req.sources if s in COMPUTE_SOURCES]
    if req.eval_type == "perf":
        variant = perf_variant(req.workload, req.load.batch_size, req.load.concurrency)
        target_metrics: tuple[str, ...] = PERF_TARGET_METRICS
        results = [
            evaluate_perf_source(config, profile, spec, data, s, req.engine, req.load, req.workload) for s in compute
        ]
    else:
        variant = data.variant
        target_metrics = spec.rules.target_metrics
        cache = EmbeddingCache(req.cache_dir or paths.cache_dir())
        results = [evaluate_source(config, profile, spec, data, s, req.engine, cache) for s in compute]

    refs = {}
    for s in req.sources:
        if s in REFERENCE_SOURCES and (
            ref := reference(s, config, spec, profile.name, variant, data.split, bool(data.subset))
        ):
            refs[s] = ref

    checks: list[CheckResult] = []
    for r in results:
        for flag, against in ((req.check_targets, Against.targets), (req.check_measurements, Against.measurements)):
            if flag:
                ref = reference(against.value, config, spec, profile.name, variant, data.split, bool(data.subset))
                checks.append(
                    check_source(
                        r.source,
                        r.metrics,
                        r.per_query,
                        against,
                        ref,
                        config,
                        spec,
                        req.require_targets,
                        target_metrics,
                    )
                )

    # Checks ran against what was saved before this run; saving comes after.
    by_source = {r.source: r for r in results}
    saved: list[str] = []
    where = f"[{spec.task_id}][{profile.name}][{variant}]"
    if req.save_targets:
        metrics, conditions, per_query = _to_save(req.save_targets, by_source, refs, spec, data, target_metrics)
        config = save_target(
            config, spec.task_id, profile.name, variant, req.save_targets, metrics, conditions, per_query
        )
        saved.append(f"targets{where} <- {req.save_targets}")
    if req.save_measurements:
        metrics, conditions, per_query = _to_save(req.save_measurements, by_source, refs, spec, data, target_metrics)
        config, mid = append_measurement(
            config, spec.task_id, profile.name, variant, req.save_measurements, metrics, conditions, per_query
        )
        saved.append(f"measurements{where} += {mid}")

    report = build_report(config.model_id, profile.name, spec, data, results, req.eval_type)
    report["variant"] = variant
    for s in req.sources:
        if s in REFERENCE_SOURCES:
            ref = refs.get(s)
            report["sources"][s] = {
                "kind": "reference",
                "metrics": ref.metrics if ref else {},
                "available": ref is not None,
                "info": ref.info if ref else None,
            }
    report["source_order"] = list(req.sources)
    if req.eval_type == "quality":
        for s, par in parity_against(results, "local").items():
            report["sources"][s]["parity_vs_local"] = par
        if profile.runtime != Runtime.torch and "local" in by_source:  # an exported runtime: how exact is it?
            report["sources"]["local"]["parity_vs_torch"] = parity_vs_torch(
                config, profile, spec, data, by_source["local"], req.engine, cache
            )
    report["checks"] = [
        {"against": c.against, "source": c.source, "reference": c.reference, "passed": c.passed, "verdicts": c.verdicts}
        for c in checks
    ]
    report["saved"] = saved
    return EvalOutcome(config, spec, data, variant, results, list(refs.values()), checks, report, saved)
