"""One `sie-bench eval` invocation as a function: compute sources, reference sources, drift checks
and saves. Returns everything the CLI prints; prints nothing itself."""

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from sie_evals.lib.config.model_config import ModelConfig, ResolvedProfile, Runtime, find_model_config
from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import InputError, UnknownNameError
from sie_evals.lib.core.names import validate_name
from sie_evals.lib.core.sources import ALL_SOURCES, COMPUTE_SOURCES, DEFAULT_SOURCE, REFERENCE_SOURCES
from sie_evals.lib.engines.cache import EmbeddingCache
from sie_evals.lib.gates.drift import CheckResult, ReferenceColumn, check_source, reference
from sie_evals.lib.gates.keys import ResultKey
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
)
from sie_evals.lib.harness.report import (
    build_report,
    latency_png_path,
    per_query_path,
    run_path,
    saturation_png_path,
)
from sie_evals.lib.harness.subject import EvalSubject, PerfLoad, conditions
from sie_evals.lib.harness.subject import result_key as subject_key
from sie_evals.lib.perf.load import PERF_TARGET_METRICS, LoadSpec
from sie_evals.lib.perf.sweep import Slo, Sweep
from sie_evals.lib.quality.parity import parity_against
from sie_evals.lib.quality.ranking import DEFAULT_RUN_K, run_paths, run_tag, source_run_path, write_run
from sie_evals.lib.quality.scoring import TaskData
from sie_evals.lib.tasks import TaskSpec


@dataclass(frozen=True)
class EvalRequest:
    model: str
    task: str
    sources: tuple[str, ...] = ()  # empty: the model config's first listed source
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
    sweep: Sweep | None = None  # perf: one load point per value
    slos: tuple[Slo, ...] = ()  # perf: goodput and max_rate_at_slo
    output: Path | None = None  # -o: the JSON report; the caller writes it, checked here before the run
    save_run: Path | None = None  # --save-run: ranked results (TREC + Parquet); the caller writes them
    save_run_k: int = DEFAULT_RUN_K  # documents per query in --save-run files and in saved results' rankings


@dataclass
class EvalOutcome:
    config: ModelConfig
    spec: TaskSpec
    data: TaskData
    key: ResultKey  # the reference columns' key (perf: of the first computed source)
    keys: dict[str, ResultKey]  # per computed source
    results: list[SourceResult]
    references: list[ReferenceColumn]
    checks: list[CheckResult]
    report: dict[str, Any]
    saved: list[str]

    @property
    def drift(self) -> bool:
        return not all(c.passed for c in self.checks)


def parse_sources(sources: str | None) -> tuple[str, ...]:
    """-s as given; None (not given) is () and means the model config's first listed source."""
    if sources is None:
        return ()
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
    validate_name("--profile", req.profile)
    if req.data.split is not None:
        validate_name("--split", req.data.split)
    for flag, source in (("--save-targets", req.save_targets), ("--save-measurements", req.save_measurements)):
        if source is None:
            continue
        if source not in req.sources:
            raise InputError(f"{flag} {source}: that source is not in --sources ({', '.join(req.sources)})")
        if source in ("targets", "measurements"):
            raise InputError(f"{flag} {source}: saved results cannot be saved again as results")
    if (req.check_targets or req.check_measurements) and not any(s in COMPUTE_SOURCES for s in req.sources):
        raise InputError("--check-targets/--check-measurements need a computed source in --sources (e.g. local)")
    if req.output is not None:  # before the run: an unwritable -o must not cost the run, nor leave files
        for path in report_files(req.output, req.sources, req.eval_type, req.sweep is not None):
            paths.writable_file(path, "-o")
    if req.save_run_k < 1:
        raise InputError(f"--save-run-k must be at least 1, got {req.save_run_k}")
    if req.save_run is not None:
        if req.eval_type != "quality":
            raise InputError("--save-run: only quality evals rank documents (not --type perf)")
        if Path(req.save_run).is_dir():
            example = Path(req.save_run) / "run.trec"
            raise InputError(f"--save-run {req.save_run} is a directory; give a file name (e.g. {example})")
        taken = set(report_files(req.output, req.sources, req.eval_type, False)) if req.output else set()
        for path in run_files(req.save_run, req.sources):
            if path in taken:
                raise InputError(f"--save-run {req.save_run}: {path} is also a file of the -o report")
            paths.writable_file(path, "--save-run")


def run_files(save_run: Path, sources: tuple[str, ...]) -> list[Path]:
    """Every file --save-run writes: a TREC file and a Parquet per computed source."""
    compute = [s for s in sources if s in COMPUTE_SOURCES]
    return [f for s in compute for f in run_paths(source_run_path(save_run, s, len(compute) > 1))]


def _check_ranked(req: EvalRequest, spec: TaskSpec) -> None:
    """Before any embedding: --save-run needs a native retrieval task searched at least k deep."""
    if req.save_run is None:
        return
    if spec.type != "retrieval" or spec.backend == "mteb":
        raise InputError(
            f"--save-run: {spec.task_id} is a {spec.type} task on the {spec.backend} backend; "
            "ranked results come from retrieval tasks on the native backend"
        )
    depth = max(spec.rules.k_values)
    if req.save_run_k > depth:
        raise InputError(f"--save-run-k {req.save_run_k}: the search keeps the top {depth} per query (the task's k)")


def write_runs(req: EvalRequest, outcome: "EvalOutcome") -> list[Path]:
    """--save-run: each computed source's ranking, top save_run_k, as TREC and Parquet."""
    if req.save_run is None:
        return []
    ranked = [(r.source, r.ranking) for r in outcome.results if r.ranking is not None]
    written: list[Path] = []
    for source, ranking in ranked:
        path = source_run_path(req.save_run, source, len(ranked) > 1)
        tag = run_tag(outcome.config.short_name, outcome.report["profile"], source)
        written += write_run(path, ranking.frame(req.save_run_k), tag)
    return written


def report_files(output: Path, sources: tuple[str, ...], eval_type: str, sweep: bool) -> list[Path]:
    """Every file write_report may write for `-o output`: the JSON and, per computed source, the
    per-query Parquet and the perf plots."""
    files = [Path(output)]
    for s in (s for s in sources if s in COMPUTE_SOURCES):
        files.append(per_query_path(files[0], s))
        if eval_type == "quality":  # the ranking: written for retrieval tasks only, checked for any
            files.append(run_path(files[0], s))
        if eval_type == "perf":
            files.append(latency_png_path(files[0], s))
        if sweep:
            files.append(saturation_png_path(files[0], s))
    return files


def conditions_of(result: SourceResult, config: ModelConfig, profile: ResolvedProfile) -> dict[str, Any]:
    """What is saved with a computed source's target or measurement (the one rule: subject.conditions)."""
    return conditions(result.run_conditions, config, profile.model_dump(mode="json"))


def _benchmark_conditions(ref: ReferenceColumn, config: ModelConfig, profile: ResolvedProfile) -> dict[str, Any]:
    """Published numbers are held to the model revision and profile they are saved for: a later run
    that differs in those is named as the change when it fails."""
    return {
        "published": {k: v for k, v in ref.info.items() if v is not None},
        "model_revision": config.revision,
        "profile": profile.name,
        "dtype": profile.dtype.value,
        "profile_settings": {
            k: v for k, v in profile.model_dump(mode="json").items() if k not in ("name", "batch_size")
        },
    }


def _to_save(
    source: str,
    results: dict[str, SourceResult],
    refs: dict[str, ReferenceColumn],
    spec: TaskSpec,
    data: TaskData,
    target_metrics: tuple[str, ...],
    config: ModelConfig,
    profile: ResolvedProfile,
    run_k: int = DEFAULT_RUN_K,
) -> tuple[dict[str, float], dict[str, Any], pd.DataFrame | None, pd.DataFrame | None]:
    if source in results:
        r = results[source]
        metrics = {m: r.metrics[m] for m in target_metrics if m in r.metrics}
        if not metrics:
            raise InputError(f"{source} produced none of the metrics to save ({', '.join(target_metrics)})")
        per_query = r.per_query if "query_id" in r.per_query.columns else None  # perf rows are requests
        run = r.ranking.frame(run_k) if r.ranking is not None else None
        return metrics, conditions_of(r, config, profile), per_query, run
    if source == "benchmark":
        if data.subset:
            raise InputError("cannot save benchmark values for a subset: published values are for the full split")
        ref = refs.get("benchmark")
        if ref is None:
            raise InputError(f"no published quality score for this model on {spec.task_id} ({data.split})")
        return dict(ref.metrics), _benchmark_conditions(ref, config, profile), None, None
    raise InputError(f"cannot save source {source!r}")


def default_sources(config: ModelConfig) -> tuple[str, ...]:
    """What `-s` means when not given: the first source the model config lists."""
    if not config.sources:
        raise InputError(f"{config.path}: field 'sources' is empty, so there is no default source; pass -s")
    return (config.sources[0],)


def result_key(
    req: EvalRequest, config: ModelConfig, spec: TaskSpec, data: TaskData, profile: str, source: str
) -> ResultKey:
    """The key of one computed source's result (perf keys name the engine and this machine)."""
    subject = EvalSubject(config.short_name, profile, spec, data, source)
    if req.eval_type != "perf":
        return subject_key(subject)
    return subject_key(subject, PerfLoad(req.load, req.workload, req.sweep.param if req.sweep is not None else None))


def run_eval(req: EvalRequest) -> EvalOutcome:
    config = find_model_config(req.model, paths.model_configs_dir())
    if not req.sources:
        req = replace(req, sources=default_sources(config))
    _validate(req)
    profile = config.resolve_profile(req.profile)
    spec, data = load_task(req.task, req.data)
    _check_ranked(req, spec)
    compute = [s for s in req.sources if s in COMPUTE_SOURCES]
    keys = {s: result_key(req, config, spec, data, profile.name, s) for s in compute}
    if req.eval_type == "perf":
        target_metrics: tuple[str, ...] = PERF_TARGET_METRICS
        results = [
            evaluate_perf_source(
                config, profile, spec, data, s, req.engine, req.load, req.workload, req.sweep, req.slos
            )
            for s in compute
        ]
    else:
        target_metrics = spec.rules.target_metrics
        cache = EmbeddingCache(req.cache_dir or paths.cache_dir())
        results = [evaluate_source(config, profile, spec, data, s, req.engine, cache) for s in compute]
    # reference columns: quality keys are engine-independent; perf references are the first engine's
    saving = req.save_targets or req.save_measurements
    first = saving if saving in keys else (compute[0] if compute else DEFAULT_SOURCE)
    key = keys.get(first) or result_key(req, config, spec, data, profile.name, first)

    refs = {}
    for s in req.sources:
        if s in REFERENCE_SOURCES and (ref := reference(s, config, spec, key)):
            refs[s] = ref

    checks: list[CheckResult] = []
    for r in results:
        for flag, against in ((req.check_targets, Against.targets), (req.check_measurements, Against.measurements)):
            if flag:
                k = keys[r.source]
                ref = reference(against.value, config, spec, k)
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
                        k,
                        conditions_of(r, config, profile),
                    )
                )

    # Checks ran against what was saved before this run; saving comes after.
    by_source = {r.source: r for r in results}
    saved: list[str] = []
    for flag, source in (("targets", req.save_targets), ("measurements", req.save_measurements)):
        if not source:
            continue
        if source not in keys and req.eval_type == "perf":
            raise InputError(f"--save-{flag} {source}: perf results are saved from a computed source")
        k = keys.get(source, key)
        metrics, conditions, per_query, run = _to_save(
            source, by_source, refs, spec, data, target_metrics, config, profile, req.save_run_k
        )
        if flag == "targets":
            config = save_target(config, k, source, metrics, conditions, per_query, run)
            saved.append(f"targets{k.where()} <- {source}")
        else:
            config, mid = append_measurement(config, k, source, metrics, conditions, per_query, run)
            saved.append(f"measurements{k.where()} += {mid}")

    report = build_report(config.model_id, profile.name, spec, data, results, req.eval_type)
    report["variant"] = key.variant
    report["profile_settings"] = profile.model_dump(mode="json")  # what `sie-bench diff` names when it changed
    report["result_key"] = key.as_dict()
    for s, k in keys.items():
        if s in report["sources"]:
            report["sources"][s]["result_key"] = k.as_dict()
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
        # an exported runtime named by the profile: how exact is it? (auto's choice passed its gate already)
        if profile.runtime in (Runtime.onnx, Runtime.openvino) and "local" in by_source:
            report["sources"]["local"]["parity_vs_torch"] = parity_vs_torch(
                config, profile, spec, data, by_source["local"], req.engine, cache
            )
    report["checks"] = [c.as_dict() for c in checks]
    report["saved"] = saved
    return EvalOutcome(config, spec, data, key, keys, results, list(refs.values()), checks, report, saved)
