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
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.run_conditions import hardware, now_iso, software
from sie_evals.lib.engines import EmbedKind, Engine, create_engine
from sie_evals.lib.engines.cache import CacheStats, EmbeddingCache
from sie_evals.lib.quality.scoring import TaskData, score_task, task_inputs
from sie_evals.lib.tasks import RetrievalData, TaskSpec, load_retrieval_data, resolve_task
from sie_evals.lib.tasks.labeled import LOCAL_LOADERS


@dataclass(frozen=True)
class DataOptions:
    split: str | None = None
    limit_queries: int | None = None
    corpus_size: int | None = None
    data_root: Path | None = None


@dataclass(frozen=True)
class EngineOptions:
    batch_size: int | None = None
    threads: int | None = None
    progress: bool = False
    device: str | None = None  # server engines: cpu (default), cuda, auto...
    # A running server to use instead of starting one (default: $SIE_EVALS_<SOURCE>_URL, else start one).
    sie_url: str | None = None
    infinity_url: str | None = None
    tei_url: str | None = None
    openai_url: str | None = None  # an OpenAI-compatible server (default $SIE_EVALS_OPENAI_URL)
    openai_model: str | None = None  # the request's `model` (default: the profile's openai_model, else model_id)

    def for_engine(self) -> dict[str, Any]:
        """Every option; create_engine hands each engine the ones that apply to it."""
        return {
            "batch_size": self.batch_size,
            "threads": self.threads,
            "progress": self.progress,
            "device": self.device,
            "sie_url": self.sie_url,
            "infinity_url": self.infinity_url,
            "tei_url": self.tei_url,
            "openai_url": self.openai_url,
            "openai_model": self.openai_model,
        }


@dataclass
class Embeddings:
    vectors: dict[EmbedKind, np.ndarray]  # rows align with scoring.task_inputs(spec, data)[kind]
    engine_info: dict[str, Any]
    cache: CacheStats
    forward_calls: int
    engine_started: bool  # False when every vector came from the cache: no model load, no server
    seconds: float

    @property
    def dims(self) -> int:
        return int(next(iter(self.vectors.values())).shape[1])


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

    @property
    def main_score(self) -> float:
        return self.metrics[self.main_score_name]


def load_data(spec: TaskSpec, split: str | None, data_root: Path | None) -> TaskData:
    if spec.type == "finesse":  # probes, not a dataset split: a run of its own
        raise InputError(
            f"task {spec.task_id} is a Finesse long-context benchmark: run it with the `finesse` CLI "
            "(finesse generate / finesse score) or the Dagster finesse assets"
        )
    split = split or spec.default_split
    if spec.type == "retrieval":
        return load_retrieval_data(spec, split, data_root)
    root = data_root or paths.data_dir()
    if root is None:
        raise InputError(
            f"{spec.task_id}: loading {spec.type} data from the Hugging Face hub is not implemented; "
            f"set {paths.DATA_DIR_ENV} to a folder holding {spec.local_dir}/"
        )
    return LOCAL_LOADERS[spec.type](spec, split, Path(root))


def load_task(task: str, opts: DataOptions) -> tuple[TaskSpec, TaskData]:
    spec = resolve_task(task)
    data = load_data(spec, opts.split, opts.data_root)
    if opts.limit_queries:
        data = data.take_subset(opts.limit_queries, opts.corpus_size)
    return spec, data


def embed_task(engine: Engine, spec: TaskSpec, data: TaskData, cache: EmbeddingCache) -> Embeddings:
    stats = CacheStats()
    start = time.perf_counter()
    vectors = {kind: cache.embed(engine, texts, kind, stats) for kind, texts in task_inputs(spec, data).items()}
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
    engine = create_engine(source, model, profile, **engine_opts.for_engine())
    with engine:
        emb = embed_task(engine, spec, data, cache)
    start = time.perf_counter()
    metrics, per_query = score_task(spec, data, emb.vectors)
    score_seconds = time.perf_counter() - start
    return SourceResult(
        source=source,
        metrics=metrics,
        main_score_name=spec.rules.main_score,
        per_query=per_query,
        run_conditions=run_conditions(data, profile, emb, engine_opts),
        extra={
            "dims": emb.dims,
            "cache": emb.cache.as_dict(),
            "forward_calls": emb.forward_calls,
            "engine_started": emb.engine_started,
            "embed_seconds": round(emb.seconds, 3),
            "score_seconds": round(score_seconds, 3),
            **(
                {"server": emb.engine_info["extra"]["server"]} if emb.engine_info.get("extra", {}).get("server") else {}
            ),
        },
        vectors=emb.vectors,
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
    engine = create_engine("local", model, torch_profile, **engine_opts.for_engine())
    with engine:
        reference = embed_task(engine, spec, data, cache).vectors
    assert result.vectors is not None
    out = parity(reference, result.vectors)
    out["max_abs_delta"] = max(float(np.abs(reference[k] - result.vectors[k]).max()) for k in reference)
    return out


PERF_WORKLOADS = ("corpus", "queries")


def perf_variant(workload: str, batch_size: int, concurrency: int) -> str:
    """Perf targets/measurements are keyed by the load shape: latency depends on it."""
    return f"perf@{workload}-b{batch_size}-c{concurrency}"


def token_counts(model: ModelConfig, profile: ResolvedProfile, texts: list[str]) -> list[int]:
    """Tokens per text by the model's own tokenizer, truncated like the model input (special tokens
    included): the one counting rule for tok/s, whatever engine serves the model."""
    from transformers import AutoTokenizer

    from sie_evals.lib.engines.local import resolve_weights

    tok = AutoTokenizer.from_pretrained(resolve_weights(model))
    enc = tok(texts, truncation=True, max_length=profile.max_seq_length)
    return [len(ids) for ids in enc["input_ids"]]


def _send_timed(engine: Engine, batch: list[str], kind: EmbedKind) -> dict[str, float] | None:
    """One perf request; returns the server's own timing of it when the engine reports one."""
    engine.embed(batch, kind)
    timing = getattr(engine, "last_server_timing", None)
    return timing() if callable(timing) else timing


def evaluate_perf_source(
    model: ModelConfig,
    profile: ResolvedProfile,
    spec: TaskSpec,
    data: TaskData,
    source: str,
    engine_opts: EngineOptions,
    load,
    workload: str = "corpus",
) -> SourceResult:
    """Closed-loop load against one source (the engine directly: the cache is bypassed)."""
    import os

    from sie_evals.lib.perf.load import run_load

    if workload not in PERF_WORKLOADS:
        raise ValueError(f"workload must be one of {PERF_WORKLOADS}")
    if isinstance(data, RetrievalData):
        kind = EmbedKind.document if workload == "corpus" else EmbedKind.query
        texts = list(data.corpus_texts if workload == "corpus" else data.query_texts)
    else:  # symmetric tasks: every text is encoded the same way, whatever the workload name
        kind = EmbedKind.query
        texts = task_inputs(spec, data)[EmbedKind.query]
    prefix = profile.document_prefix if kind == EmbedKind.document else profile.query_prefix
    counts = token_counts(model, profile, [prefix + t for t in texts])
    engine = create_engine(source, model, profile, **engine_opts.for_engine())
    load_before = os.getloadavg()[0]
    with engine:
        engine.start()  # model load / server start is not part of the measurement
        result = run_load(lambda batch: _send_timed(engine, batch, kind), texts, counts, load)
    load_after = os.getloadavg()[0]
    metrics = result.metrics()
    cpus = os.cpu_count() or 1
    conditions = {
        **_conditions_base(data, profile, engine.info().as_dict(), engine_opts),
        "batch_size": load.batch_size,
        "concurrency": load.concurrency,
        "workload": workload,
        "trials": load.trials,
        "requests_per_trial": load.requests,
        "duration_s_per_trial": load.duration_s,
        "warmup_requests": load.warmup_requests,
        "client_threads": load.concurrency,
        "load_avg_before": round(load_before, 2),
        "load_avg_after": round(load_after, 2),
    }
    warnings = []
    if load_before > 0.5 * cpus:
        warnings.append(
            f"machine was busy before the run (load average {load_before:.2f} on {cpus} CPUs): "
            "latencies may be inflated"
        )
    if result.errors:
        warnings.append(f"{result.errors} request(s) failed, e.g. {result.trials[0].error_messages[:1]}")
    return SourceResult(
        source=source,
        metrics=metrics,
        main_score_name="latency_p50_ms",
        per_query=result.requests_frame(),
        run_conditions=conditions,
        extra={
            "errors": result.errors,
            "spread": result.spread(),
            "warnings": warnings,
            "trials": [t.metrics() for t in result.trials],
            "perf_result": result,
        },
    )
