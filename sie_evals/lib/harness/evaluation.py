"""A quality eval as composable steps. The CLI runs them in one go; the Dagster assets run the same
functions one asset at a time (dataset -> embeddings -> scores)."""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sie_evals.lib.config.model_config import ModelConfig, ResolvedProfile
from sie_evals.lib.core import paths
from sie_evals.lib.core.run_conditions import hardware, now_iso, software
from sie_evals.lib.engines import EmbedKind, Engine, create_engine, report_fields
from sie_evals.lib.engines.cache import CacheStats, EmbeddingCache
from sie_evals.lib.engines.options import EngineOptions
from sie_evals.lib.harness.perf_workload import PerfWorkload, calibrate_overhead, perf_target, send_timed
from sie_evals.lib.quality.ranking import Ranking
from sie_evals.lib.quality.task_types import MtebTaskType, task_type_for
from sie_evals.lib.tasks import TaskSpec, resolve_task
from sie_evals.lib.tasks.base import TaskDataBase as TaskData


@dataclass(frozen=True)
class DataOptions:
    split: str | None = None
    limit_queries: int | None = None
    corpus_size: int | None = None
    data_root: Path | None = None
    backend: str | None = None  # native | mteb; None: native where it exists


@dataclass
class Embeddings:
    vectors: dict[EmbedKind, np.ndarray]  # rows align with task_type_for(spec).inputs(data)[kind]
    engine_info: dict[str, Any]
    cache: CacheStats
    forward_calls: int
    engine_started: bool  # False when every vector came from the cache: no model load, no server
    seconds: float

    @property
    def dims(self) -> int | None:
        return int(next(iter(self.vectors.values())).shape[1]) if self.vectors else None


@dataclass
class SourceResult:
    source: str
    metrics: dict[str, float]
    main_score_name: str
    per_query: pd.DataFrame
    run_conditions: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    # The vectors scored (quality evals), kept in memory for parity between sources; not in the report.
    vectors: dict[EmbedKind, np.ndarray] | None = field(default=None, repr=False)
    # Retrieval: the ranking the metrics came from (--save-run, saved results); not in the report.
    ranking: Ranking | None = field(default=None, repr=False)

    @property
    def main_score(self) -> float:
        return self.metrics[self.main_score_name]


def load_data(spec: TaskSpec, split: str | None, data_root: Path | None) -> TaskData:
    return task_type_for(spec).load(split, data_root)


def load_task(task: str, opts: DataOptions) -> tuple[TaskSpec, TaskData]:
    spec = resolve_task(task, opts.backend)
    task_type = task_type_for(spec)
    if isinstance(task_type, MtebTaskType):  # MTEB data is sliced inside the task instance
        return spec, task_type.load(opts.split, opts.data_root, opts.limit_queries, opts.corpus_size)
    data = task_type.load(opts.split, opts.data_root)
    if opts.limit_queries:
        data = task_type.take_subset(data, opts.limit_queries, opts.corpus_size)
    return spec, data


def embed_task(engine: Engine, spec: TaskSpec, data: TaskData, cache: EmbeddingCache) -> Embeddings:
    stats = CacheStats()
    start = time.perf_counter()
    vectors = task_type_for(spec).embed(data, engine, cache, stats)
    return Embeddings(
        vectors, engine.info().as_dict(), stats, engine.forward_calls, engine.started, time.perf_counter() - start
    )


def _conditions_base(
    data: TaskData, profile: ResolvedProfile, engine_info: dict[str, Any], engine_opts: EngineOptions
) -> dict[str, Any]:
    return {
        "engine": engine_info["engine"],
        "engine_version": engine_info["version"],
        "model_id": engine_info["model_id"],
        "model_revision": engine_info["model_revision"],
        "weights": engine_info["weights"],
        "profile": profile.name,
        "dtype": profile.dtype.value,
        "runtime": engine_info.get("extra", {}).get("runtime"),  # local engine: torch, onnx, openvino
        "runtime_choice": engine_info.get("extra", {}).get("runtime_choice"),  # runtime auto: why, timings
        "devices": engine_info.get("extra", {}).get("devices"),
        "batch_size": engine_opts.batch_size or profile.batch_size,
        "concurrency": None,
        "threads": engine_opts.threads,
        "dataset": data.describe(),
        "hardware": hardware(),
        "software": software(),
        "date": now_iso(),
    }


def run_conditions(
    data: TaskData, profile: ResolvedProfile, emb: Embeddings, engine_opts: EngineOptions
) -> dict[str, Any]:
    return _conditions_base(data, profile, emb.engine_info, engine_opts)


def evaluate_source(
    model: ModelConfig,
    profile: ResolvedProfile,
    spec: TaskSpec,
    data: TaskData,
    source: str,
    engine_opts: EngineOptions,
    cache: EmbeddingCache | None = None,
) -> SourceResult:
    """Embed (through the cache) and score one compute source."""
    cache = cache or EmbeddingCache(paths.cache_dir())
    task_type = task_type_for(spec)
    engine = create_engine(source, model, profile, engine_opts)
    stats = CacheStats()
    start = time.perf_counter()
    with engine:
        metrics, per_query, task_extra, vectors = task_type.evaluate(data, engine, cache, stats)
        ranking = task_extra.pop("ranking", None)
        emb = Embeddings(
            vectors or {},
            engine.info().as_dict(),
            stats,
            engine.forward_calls,
            engine.started,  # read before the engine stops: False when everything came from the cache
            time.perf_counter() - start,
        )
    return SourceResult(
        source=source,
        metrics=metrics,
        main_score_name=task_type.main_score,
        per_query=per_query,
        run_conditions=run_conditions(data, profile, emb, engine_opts),
        extra={
            "dims": emb.dims,
            "cache": emb.cache.as_dict(),
            "forward_calls": emb.forward_calls,
            "engine_started": emb.engine_started,
            "embed_seconds": round(emb.seconds, 3),  # embedding and scoring together
            **({"warnings": list(data.warnings)} if getattr(data, "warnings", ()) else {}),
            **task_extra,
            **report_fields.describe(profile, emb.vectors),
            **(
                {"server": emb.engine_info["extra"]["server"]} if emb.engine_info.get("extra", {}).get("server") else {}
            ),
        },
        vectors=vectors,
        ranking=ranking,
    )


def parity_vs_torch(
    model: ModelConfig,
    profile: ResolvedProfile,
    spec: TaskSpec,
    data: TaskData,
    result: SourceResult,
    engine_opts: EngineOptions,
    cache: EmbeddingCache,
) -> dict[str, Any]:
    """Per-item parity of a `local` result run by an exported runtime (onnx, openvino) against the
    same profile run by torch (through the cache), plus the largest absolute difference of any value."""
    from sie_evals.lib.config.model_config import Runtime
    from sie_evals.lib.quality.parity import parity

    torch_profile = profile.model_copy(update={"runtime": Runtime.torch})
    engine = create_engine("local", model, torch_profile, engine_opts)
    with engine:
        reference = embed_task(engine, spec, data, cache).vectors
    assert result.vectors is not None
    out = parity(reference, result.vectors)
    out["max_abs_delta"] = max(float(np.abs(reference[k] - result.vectors[k]).max()) for k in reference)
    return out


def _point_metrics(result, slos) -> dict[str, float]:
    from sie_evals.lib.perf.sweep import goodput, with_error_rate

    metrics = with_error_rate(result.metrics())
    if slos:
        import statistics

        metrics["goodput_per_s"] = float(
            statistics.median(goodput(t.latencies_ms, t.duration_s, slos) for t in result.trials)
        )
        metrics["slo_met"] = float(all(s.met(metrics) for s in slos))
    return metrics


def evaluate_perf_source(
    model: ModelConfig,
    profile: ResolvedProfile,
    spec: TaskSpec,
    data: TaskData,
    source: str,
    engine_opts: EngineOptions,
    load,
    workload: str = "corpus",
    sweep=None,
    slos: tuple = (),
    slo_search_steps: int = 3,
    stop=None,
) -> SourceResult:
    """Closed- or open-loop load against one source (the engine directly: the cache is bypassed); with
    a sweep, one load point per value on the same started engine, and with SLOs the highest rate or
    concurrency meeting them (sweep.search_max_at_slo)."""
    import os

    from sie_evals.lib.perf.aio import client_of
    from sie_evals.lib.perf.load import run_load
    from sie_evals.lib.perf.sweep import search_max_at_slo
    from sie_evals.lib.perf.trials import trial_intervals, trial_values

    work = PerfWorkload(model, profile, spec, data, workload)
    points = [(None, load)] if sweep is None else [(v, sweep.spec_at(load, v)) for v in sweep.values]
    for _, point in points:
        work.texts_and_counts(point.tokens)  # bad --tokens fails before a server starts
    engine = create_engine(source, model, profile, engine_opts)
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    results = []
    sizes: list = []  # sparse nnz / tokens per text of non-dense outputs
    generators: set[str] = set()  # which generator ran: fast or aiohttp (HTTP engines: aio.client_of), or threads
    replies: list[bytes] = []  # one reply of the server: what the overhead calibration's null endpoint sends

    def run_point(value, point, search: bool = False) -> dict[str, float]:
        texts, counts = work.texts_and_counts(point.tokens)
        target, check, redact = perf_target(engine, texts, point.batch_size, work.kind, replies)
        generators.add(client_of(target) if target is not None else "threads")
        result = run_load(
            lambda batch: send_timed(engine, batch, work.kind, sizes), texts, counts, point, stop, target, check, redact
        )
        metrics = _point_metrics(result, slos)
        results.append((value, result))
        rows.append(
            {
                "value": value,
                "search": search,
                "load_shape": point.load_shape(workload),
                "metrics": metrics,
                "latency_histogram_hdr": result.histograms()["latency_all"],
            }
        )
        return metrics

    search = None
    with engine:
        engine.start()  # model load / server start is not part of the measurement
        for value, point in points:
            run_point(value, point)
            if stop is not None and stop.is_set():
                break
        if sweep is not None and slos and sweep.searchable and not (stop is not None and stop.is_set()):
            search = search_max_at_slo(
                [(r["value"], r["metrics"]) for r in rows],
                slos,
                lambda v: run_point(v, sweep.spec_at(load, v), search=True),
                sweep.param,
                slo_search_steps,
            )
        # the generator's own overhead at the heaviest load run (lib/perf/overhead.py)
        overhead = None
        if not (stop is not None and stop.is_set()):
            heaviest = points[-1][1]
            texts, counts = work.texts_and_counts(heaviest.tokens)
            target = perf_target(engine, texts, heaviest.batch_size, work.kind)[0]
            overhead = calibrate_overhead(heaviest, texts, counts, target, replies[0] if replies else b"{}")
    load_after = os.getloadavg()[0]
    rows.sort(key=lambda r: r["value"] if r["value"] is not None else 0)
    main = results[0][1]
    metrics = rows[0]["metrics"] if sweep is None else rows[-1]["metrics"]
    slo_summary: dict[str, Any] | None = {"slos": [str(s) for s in slos]} if slos else None
    if search is not None:
        knee = search["value"]
        if knee is not None:
            metrics = search["metrics"]
        rate_at = None if knee is None else (knee if sweep.param == "rate" else metrics.get("requests_per_s"))
        slo_summary.update(
            param=sweep.param,
            max_rate_at_slo=rate_at,
            max_concurrency_at_slo=knee if sweep.param == "concurrency" else None,
            bracketed=search["bracketed"],
            first_failing=search.get("upper"),
            probes=[v for v, _ in search["probes"]],
        )
        metrics = {**metrics, **({"max_rate_at_slo": float(rate_at)} if rate_at is not None else {})}
        if sweep.param == "concurrency" and knee is not None:
            metrics["max_concurrency_at_slo"] = float(knee)
    if slo_summary is not None:  # of the reported point: the knee after a search, else the (top) point
        slo_summary["met"] = {str(s): s.met(metrics) for s in slos}
    cpus = os.cpu_count() or 1
    conditions = {
        **_conditions_base(data, profile, engine.info().as_dict(), engine_opts),
        "batch_size": load.batch_size,
        "concurrency": load.concurrency if load.mode == "closed" else None,
        "workload": workload,
        "load_shape": load.load_shape(workload),
        "sweep": None if sweep is None else {"param": sweep.param, "values": list(sweep.values)},
        "trials": load.trials,
        "requests_per_trial": load.requests,
        "duration_s_per_trial": load.duration_s,
        "warmup_requests": load.warmup_requests,
        "client_threads": load.concurrency if load.mode == "closed" else load.max_concurrency,
        "seed": load.seed if load.mode == "open" else None,
        "generator": ", ".join(sorted(generators)),
        "generator_overhead": overhead,
        "trial_values": trial_values([t.metrics() for t in main.trials]) if sweep is None else None,
        "load_avg_before": round(load_before, 2),
        "load_avg_after": round(load_after, 2),
    }
    warnings = []
    if overhead is not None:
        from sie_evals.lib.perf.overhead import overhead_warnings

        metrics = {**metrics, **{f"generator_overhead_{k}": v for k, v in overhead.items() if k.endswith("_ms")}}
        warnings.extend(overhead_warnings(overhead, metrics))
    if load_before > 0.5 * cpus:
        warnings.append(
            f"machine was busy before the run (load average {load_before:.2f} on {cpus} CPUs): "
            "latencies may be inflated"
        )
    errors = sum(r.errors for _, r in results)
    if not any(len(t.latencies_ms) for _, r in results for t in r.trials):  # no latency to report
        from sie_evals.lib.core.errors import EngineError

        first = next((m for _, r in results for t in r.trials for m in t.error_messages), "none sent")
        raise EngineError(f"{source}: no perf request succeeded ({errors} failed), e.g. {first}")
    if errors:
        first = next(r for _, r in results if r.errors)
        warnings.append(f"{errors} request(s) failed, e.g. {first.trials[0].error_messages[:1]}")
    for value, r in results:
        late = sum(t.late for t in r.trials)
        dropped = sum(t.dropped for t in r.trials)
        if late or dropped:
            where = "" if value is None else f" at {sweep.param}={value:g}"
            warnings.append(
                f"in-flight cap {r.spec.max_concurrency} reached{where}: {late} request(s) sent late, "
                f"{dropped} dropped (the server did not keep up with the offered rate)"
            )
        if any(t.stopped_early for t in r.trials):
            warnings.append("stopped early: the results cover what ran before the stop")
    import pandas as pd

    frames = []
    for value, r in results:
        frame = r.requests_frame()
        if sweep is not None:
            frame.insert(0, sweep.param, value)
        frames.append(frame)
    extra: dict[str, Any] = {
        "errors": errors,
        "spread": main.spread() if sweep is None else {},
        "warnings": warnings,
        "trials": [t.metrics() for t in main.trials] if sweep is None else [],
        # mean and 95% t interval over trials of p50/p99/throughput (lib/perf/trials.py, AIPerf's way)
        "trials_ci": trial_intervals([t.metrics() for t in main.trials]) if sweep is None else {},
        "load_shape": load.load_shape(workload),
        "histograms": main.histograms() if sweep is None else None,
        "perf_result": main if sweep is None else None,
        **report_fields.perf_fields(profile, sizes),
    }
    if sweep is not None:
        extra["sweep"] = {"param": sweep.param, "rows": rows}
    if slo_summary is not None:
        extra["slo"] = slo_summary
    return SourceResult(
        source=source,
        metrics=metrics,
        main_score_name="latency_p50_ms",
        per_query=pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0],
        run_conditions=conditions,
        extra=extra,
    )
