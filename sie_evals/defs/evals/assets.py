"""Eval assets:

    task_dataset -> embeddings -> quality_scores, perf_scores -> target_comparison;  all -> eval_report

All but the report are partitioned by the cells the model configs declare, `model:task:source`
(partitions.py), and automated (schedules.py): the datasets on the nightly cron, the rest after them.

Thin wrappers: each calls the same library functions the CLI runs, and records what it did as
metadata (numeric metrics and run conditions plot over time in the UI)."""

import base64
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from sie_evals.defs.evals.partitions import eval_key, eval_partitions
from sie_evals.defs.evals.resources import EngineFactory, EvalSettings
from sie_evals.defs.evals.schedules import FOLLOW, FOLLOW_IF_CHECKS_PASSED, NIGHTLY
from sie_evals.defs.executors import CPU_STEP_TAGS, GPU_STEP_TAGS
from sie_evals.lib.config.model_config import ModelConfig, ResolvedProfile, find_model_config
from sie_evals.lib.core.atomic import atomic_write, atomic_write_text
from sie_evals.lib.core.errors import InputError, SetupError
from sie_evals.lib.core.run_conditions import hardware, now_iso, software
from sie_evals.lib.engines import EmbedKind, report_fields, serialization, sharding
from sie_evals.lib.engines.cache import CacheStats
from sie_evals.lib.engines.vectors import similarity
from sie_evals.lib.gates.comparison import compare, comparison_markdown
from sie_evals.lib.gates.keys import EvalKey, ResultKey, path_slug, split_model_part
from sie_evals.lib.harness.evaluation import embed_task, evaluate_perf_source, load_task
from sie_evals.lib.harness.report import PERF_TABLE_METRICS, headline_metrics
from sie_evals.lib.harness.subject import EvalSubject, PerfLoad
from sie_evals.lib.harness.subject import conditions as run_conditions
from sie_evals.lib.harness.subject import result_key as subject_key
from sie_evals.lib.perf.load import latency_histogram_png
from sie_evals.lib.perf.plots import saturation_png
from sie_evals.lib.quality.task_types import MtebTaskType, score_task, task_type_for
from sie_evals.lib.tasks import resolve_task
from sie_evals.lib.tasks.snapshot import write_snapshot

GROUP = "evals"

# Transient failures (a server that dropped a connection, ran out of memory, restarted) are retried
# with backoff; bad input is raised as a Failure that is never retried (see `_input_errors_final`).
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


@contextlib.contextmanager
def _input_errors_final() -> Iterator[None]:
    """A malformed config or dataset, or a server that was never installed, fails the same way on
    every attempt: do not retry it."""
    try:
        yield
    except (InputError, SetupError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


def _conditions_metadata(engine_version: str, profile: str) -> dict[str, Any]:
    """Run conditions as metadata: numbers plot over time next to the metrics they explain."""
    hw = hardware()
    return {
        "engine_version": engine_version,
        "profile": profile,
        "cpu_count": int(hw["cpu_count"] or 0),
        "load_avg_1m": float(hw["load_avg_1m"] or 0.0),
        "cpu_model": str(hw["cpu"]),
        "gpus": ", ".join(hw["gpus"]) or "none",
        "host": str(hw["host"]),
    }


def _config_and_profile(key: EvalKey, settings: EvalSettings) -> tuple[ModelConfig, ResolvedProfile]:
    """A `model@profile` key names its profile; a bare model key uses the deployment's profile."""
    model, profile = split_model_part(key.model)
    config = find_model_config(model, settings.configs_dir())
    return config, config.resolve_profile(profile or settings.profile)


def _save_output(path: Path, out: Any) -> None:
    """.npy for dense, .npz for sparse/multivector (no pickle); streamed from a memory-mapped corpus."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: numpy would append .npy/.npz to a path
            serialization.dump_to(fh, out)

    atomic_write(path, write)


def png_metadata(path: Path, alt: str) -> dg.MetadataValue:
    data = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


@dg.asset(
    partitions_def=eval_partitions,
    group_name=GROUP,
    io_manager_key="json_io",
    kinds={"parquet"},
    op_tags=CPU_STEP_TAGS,
    automation_condition=NIGHTLY,
)
def task_dataset(context: dg.AssetExecutionContext, settings: EvalSettings) -> dg.Output[dict[str, Any]]:
    """Corpus, queries and qrels of the cell's task split, snapshotted as Parquet in a folder named by
    the content hash (the cells of one task share it)."""
    spec, data = load_task(eval_key(context.partition_key).task, settings.data_options())
    store = settings.artifacts()  # shared by every worker (lib/core/artifacts.py)
    folder_key = f"datasets/{path_slug(spec.task_id)}/{data.split}/{data.content_hash[:16]}"
    write_snapshot(data, store.local_path(folder_key))
    snapshot = store.publish(folder_key)
    value = {**data.describe(), "snapshot_dir": snapshot}
    return dg.Output(
        value,
        metadata={
            **data.counts,
            "content_hash": data.content_hash,
            "origin": data.origin,
            "snapshot_dir": dg.MetadataValue.path(snapshot),
        },
    )


def _input_sizes(spec: Any, data: Any) -> dict[EmbedKind, int] | None:
    """Texts per kind the task embeds; None where MTEB's own evaluators decide what to embed."""
    try:
        return {kind: len(texts) for kind, texts in task_type_for(spec).inputs(data).items()}
    except NotImplementedError:
        return None


@dg.op(out=dg.DynamicOut(dict, io_manager_key="json_io"), tags=CPU_STEP_TAGS)  # values on shared storage
def plan_shards(
    context: dg.OpExecutionContext, task_dataset: dict[str, Any], settings: EvalSettings
) -> Iterator[dg.DynamicOutput[dict[str, Any]]]:
    """The cell's shards (lib/engines/sharding.py): whole embedding-cache chunks, at most `shard_size` texts each;
    a task of at most `shard_size` texts is one shard."""
    key = eval_key(context.partition_key)
    with _input_errors_final():
        spec = resolve_task(key.task)
        data = settings.snapshot(task_dataset)
    shards = sharding.plan_shards(_input_sizes(spec, data), settings.shard_size, settings.cache().chunk_size)
    context.log.info(f"{key}: {len(shards)} shard(s) of at most {settings.shard_size} texts (whole cache chunks)")
    for shard in shards:
        yield dg.DynamicOutput(shard.as_dict(), mapping_key=shard.name, metadata={"rows": shard.rows})


@dg.op(
    out=dg.Out(io_manager_key="json_io"),
    tags=GPU_STEP_TAGS,  # the Celery/k8s queue of the accelerator workers (defs/executors.py)
    pool="gpu",  # one embedding step per accelerator at a time (limit in dagster.yaml)
    retry_policy=TRANSIENT_RETRY,  # on any worker: a retried shard finds its finished chunks in the cache
)
def embed_shard(
    context: dg.OpExecutionContext,
    shard: dict[str, Any],
    task_dataset: dict[str, Any],
    settings: EvalSettings,
    engines: EngineFactory,
) -> dg.Output[dict[str, Any]]:
    """One shard's texts into the embedding cache, through the cell's engine."""
    key, plan = eval_key(context.partition_key), sharding.Shard.from_dict(shard)
    with _input_errors_final():
        config, profile = _config_and_profile(key, settings)
        spec = resolve_task(key.task)
        data = settings.snapshot(task_dataset)
        with (
            settings.cache_scope(),
            engines.create(key.source, config, profile, settings.engine_options()) as engine,
        ):
            if plan.whole:  # MTEB's evaluators: run once, so every text they embed is in the cache
                emb = embed_task(engine, spec, data, settings.cache())
                report = sharding.shard_report(engine, plan, emb.cache, emb.seconds, emb.forward_calls)
            else:
                report = sharding.embed_shard(engine, task_type_for(spec).inputs(data), plan, settings.cache())
    context.log.info(
        f"{key} {plan.name}: {report.rows} texts in {report.seconds:.1f} s, cache hits {report.cache['hits']}, "
        f"misses {report.cache['misses']}"
    )
    metadata = {"rows": report.rows, "seconds": round(report.seconds, 3), "forward_calls": report.forward_calls}
    metadata.update({f"cache_{k}": v for k, v in report.cache.items()})
    return dg.Output(report.as_dict(), metadata={**metadata, "cache_hit": report.cache["misses"] == 0})


# `io_manager` (the JSON one, definitions.py), not `json_io`: a graph asset's output always names the
# default key, and a run that selects `embeddings` without a downstream asset builds its config schema
# from the resources its ops require (DagsterInvalidDefinitionError before the run starts otherwise).
@dg.op(out=dg.Out(io_manager_key="io_manager"), tags=CPU_STEP_TAGS)
def merge_shards(
    context: dg.OpExecutionContext, reports: list[dict[str, Any]], task_dataset: dict[str, Any], settings: EvalSettings
) -> dg.Output[dict[str, Any]]:
    """The shards' vectors read back through the cache in input order (no model: a missing chunk is an error),
    written as the cell's vector files."""
    key = eval_key(context.partition_key)
    reports = sorted(reports, key=lambda r: r["index"])
    with _input_errors_final():
        config, profile = _config_and_profile(key, settings)
        spec = resolve_task(key.task)
        data = settings.snapshot(task_dataset)
    cache = settings.cache()
    engine = sharding.merge_engine(config, profile, reports, str(cache.root))
    vectors = embed_task(engine, spec, data, cache).vectors if _input_sizes(spec, data) is not None else {}
    store = settings.artifacts()
    folder_key = f"embeddings/{key.path_slug()}/{data.content_hash[:16]}"
    folder = store.local_path(folder_key)
    files = {
        kind: folder / f"{kind.value}.{'npy' if isinstance(v, np.ndarray) else 'npz'}" for kind, v in vectors.items()
    }
    for kind, out in vectors.items():
        _save_output(files[kind], out)
    refs = {kind: store.publish(f"{folder_key}/{path.name}") for kind, path in files.items()}
    done = sharding.totals(reports)
    info = engine.info().as_dict()
    dims = int(next(iter(vectors.values())).shape[1]) if vectors else None
    value = {
        "key": str(key),
        "profile": profile.name,
        "similarity": similarity(profile),
        "profile_settings": profile.model_dump(mode="json"),
        "content_hash": data.content_hash,
        "vectors": {kind.value: refs[kind] for kind in vectors},
        "dims": dims,
        "engine": info,
        "cache": done["cache"],
        "shards": len(reports),
    }
    metadata = {
        "dims": dims,
        **{f"{kind.value}_vectors": int(v.shape[0]) for kind, v in vectors.items()},
        "shards": len(reports),
        "embed_seconds": round(done["seconds"], 3),  # the shards' own, summed
        "forward_calls": done["forward_calls"],
        "cache_hits": done["cache"]["hits"],
        "cache_misses": done["cache"]["misses"],
        "engine_version": info["version"],
        "profile": profile.name,
        **_output_metadata(profile, vectors),
    }
    return dg.Output(value, metadata=metadata)


@dg.graph_asset(partitions_def=eval_partitions, group_name=GROUP, kinds={"numpy"}, automation_condition=FOLLOW)
def embeddings(task_dataset: dict[str, Any]) -> dict[str, Any]:
    """Query and document vectors for one model:task:source, through the embedding cache: a task above
    `shard_size` texts as shards, one step each (`embeddings.embed_shard[shard_2_of_9]`, on the gpu queue, retried
    on any worker), merged in input order; the vectors are the unsharded run's, byte for byte."""
    reports = plan_shards(task_dataset).map(lambda shard: embed_shard(shard, task_dataset))
    return merge_shards(reports.collect(), task_dataset)


def _output_metadata(profile: ResolvedProfile, vectors: dict[EmbedKind, Any]) -> dict[str, Any]:
    """Sparse nnz / tokens per text of a non-dense profile, flattened to plottable numbers."""
    flat: dict[str, Any] = {}
    for name, value in report_fields.describe(profile, vectors).items():
        if isinstance(value, dict) and name != "muvera":
            flat.update({f"{name}_{stat}": float(v) for stat, v in value.items()})
        elif isinstance(value, str):
            flat[name] = value
    return flat


@dg.asset(
    partitions_def=eval_partitions,
    group_name=GROUP,
    io_manager_key="json_io",
    kinds={"pandas"},
    op_tags=CPU_STEP_TAGS,
    automation_condition=FOLLOW,
)
def quality_scores(
    context: dg.AssetExecutionContext,
    task_dataset: dict[str, Any],
    embeddings: dict[str, Any],
    settings: EvalSettings,
    engines: EngineFactory,
) -> dg.Output[dict[str, Any]]:
    """MTEB-exact retrieval metrics (aggregate + per query) from the cached embeddings."""
    key = eval_key(context.partition_key)
    spec = resolve_task(key.task)
    data = settings.snapshot(task_dataset)
    if embeddings["content_hash"] != data.content_hash:
        raise dg.Failure(
            f"embeddings for {key} were computed on dataset {embeddings['content_hash'][:12]}, "
            f"not the current {data.content_hash[:12]}: rematerialize embeddings"
        )
    start = time.perf_counter()
    task_type = task_type_for(spec)
    if isinstance(task_type, MtebTaskType):
        # MTEB's evaluator embeds while it scores: the embeddings step filled the cache, so this reads it
        with _input_errors_final():
            config, profile = _config_and_profile(key, settings)
        with (
            settings.cache_scope(),
            engines.create(key.source, config, profile, settings.engine_options()) as engine,
        ):
            metrics, per_query, _, _ = task_type.evaluate(data, engine, settings.cache(), CacheStats())
    else:
        vectors = {
            EmbedKind(kind): serialization.load_file(settings.artifacts().fetch_file(path))
            for kind, path in embeddings["vectors"].items()
        }
        metrics, per_query = score_task(spec, data, vectors, embeddings.get("similarity", "cosine"))
    subject = EvalSubject(split_model_part(key.model)[0], embeddings["profile"], spec, data, key.source)
    result_key = subject_key(subject)
    pq_key = f"quality_scores/{key.path_slug()}.per_query.parquet"
    atomic_write(settings.artifacts().local_path(pq_key), lambda tmp: per_query.to_parquet(tmp, index=False))
    pq_path = settings.artifacts().publish(pq_key)  # a reference: the path, or the shared store's URL
    engine = embeddings["engine"]
    with _input_errors_final():
        config = find_model_config(split_model_part(key.model)[0], settings.configs_dir())
    conditions = run_conditions(
        {
            "engine": engine["engine"],
            "engine_version": engine["version"],
            "model_revision": engine["model_revision"],
            "weights": engine["weights"],
            "profile": embeddings["profile"],
            "dtype": (embeddings.get("profile_settings") or {}).get("dtype"),
            "dataset": data.describe(),
            "hardware": hardware(),
            "software": software(),
            "date": now_iso(),
        },
        config,
        embeddings.get("profile_settings"),
    )
    value = {
        "key": str(key),
        "result_key": result_key.as_dict(),
        "conditions": conditions,
        "task": spec.task_id,
        "split": data.split,
        "main_score": spec.rules.main_score,
        "metrics": metrics,
        "per_query_path": pq_path,
        "snapshot_dir": task_dataset["snapshot_dir"],  # query texts for a failed check's regressed queries
        "dataset": data.describe(),
        "engine": embeddings["engine"],
        "profile": embeddings["profile"],
    }
    metadata: dict[str, Any] = {m: float(metrics[m]) for m in headline_metrics(spec.type, metrics)}
    metadata.update(
        {
            "main_score": float(metrics[spec.rules.main_score]),
            "main_score_name": spec.rules.main_score,
            "score_seconds": round(time.perf_counter() - start, 3),
            "queries": len(per_query),
            "dataset_hash": data.content_hash,
            "variant": result_key.variant,
            "result_key": dg.MetadataValue.json(result_key.as_dict()),
            "per_query_path": dg.MetadataValue.path(pq_path),
            **_conditions_metadata(embeddings["engine"]["version"], embeddings["profile"]),
        }
    )
    return dg.Output(value, metadata=metadata)


@dg.asset(
    partitions_def=eval_partitions,
    group_name=GROUP,
    io_manager_key="json_io",
    deps=[embeddings],  # measure a model only once it embeds correctly
    pool="gpu",  # a latency run must not share the accelerator with another run
    retry_policy=TRANSIENT_RETRY,
    kinds={"pandas"},
    op_tags=GPU_STEP_TAGS,
    automation_condition=FOLLOW,
)
def perf_scores(
    context: dg.AssetExecutionContext, task_dataset: dict[str, Any], settings: EvalSettings, engines: EngineFactory
) -> dg.Output[dict[str, Any]]:
    """Closed-loop latency and throughput (the CLI's --type perf) on the task's texts, with a
    latency histogram."""
    key = eval_key(context.partition_key)
    with _input_errors_final():
        load = settings.load_spec()
        sweep, slos = settings.perf_sweep_and_slos()
        config, profile = _config_and_profile(key, settings)
        spec = resolve_task(key.task)
        data = settings.snapshot(task_dataset)
    with _input_errors_final(), settings.cache_scope():
        result = evaluate_perf_source(
            config,
            profile,
            spec,
            data,
            key.source,
            engines.engine_options(settings.engine_options()),
            load,
            settings.perf_workload,
            sweep,
            slos,
        )
    for warning in result.extra["warnings"]:
        context.log.warning(warning)
    subject = EvalSubject(split_model_part(key.model)[0], profile.name, spec, data, key.source)
    swept = sweep.param if sweep is not None else None
    result_key = subject_key(subject, PerfLoad(load, settings.perf_workload, swept, result.run_conditions["hardware"]))
    variant = result_key.variant
    folder = settings.results_root() / "perf_scores"
    requests_key = f"perf_scores/{key.path_slug()}.requests.parquet"
    atomic_write(
        settings.artifacts().local_path(requests_key), lambda tmp: result.per_query.to_parquet(tmp, index=False)
    )
    requests_path = settings.artifacts().publish(requests_key)  # read by eval_report, maybe on another worker
    png_path = folder / f"{key.path_slug()}.latency.png"
    if result.extra.get("sweep"):  # a sweep: the saturation plot (throughput and p50/p99 vs offered load)
        png_path = folder / f"{key.path_slug()}.saturation.png"
        atomic_write(
            png_path,
            lambda tmp: saturation_png(result.extra["sweep"], tmp, f"{key} ({variant})", result.extra.get("slo")),
        )
    else:
        atomic_write(
            png_path, lambda tmp: latency_histogram_png(result.extra["perf_result"], tmp, f"{key} ({variant})")
        )
    metrics = result.metrics
    value = {
        "key": str(key),
        "task": spec.task_id,
        "variant": variant,
        "split": data.split,
        "metrics": metrics,
        "requests_path": requests_path,
        "histogram_path": str(png_path),
        "errors": result.extra["errors"],
        "spread": result.extra["spread"],
        "warnings": result.extra["warnings"],
        "run_conditions": result.run_conditions,
        "load_shape": result.extra["load_shape"],
        "sweep": result.extra.get("sweep"),
        "slo": result.extra.get("slo"),
        "result_key": result_key.as_dict(),
        "conditions": run_conditions(result.run_conditions, config, profile.model_dump(mode="json")),
        "dataset": data.describe(),
        "profile": profile.name,
    }
    metadata: dict[str, Any] = {m: float(metrics[m]) for m in PERF_TABLE_METRICS if m in metrics}
    metadata.update(
        {
            "errors": int(result.extra["errors"]),
            "variant": variant,
            "result_key": dg.MetadataValue.json(result_key.as_dict()),
            "batch_size": load.batch_size,
            "concurrency": load.concurrency,
            "trials": load.trials,
            "load_avg_before": float(result.run_conditions["load_avg_before"]),
            "load_avg_after": float(result.run_conditions["load_avg_after"]),
            ("saturation_plot" if result.extra.get("sweep") else "latency_histogram"): png_metadata(
                png_path, f"{'saturation plot' if result.extra.get('sweep') else 'latency histogram'} {key}"
            ),
            "load_shape": dg.MetadataValue.json(result.extra["load_shape"]),
            "histogram_path": dg.MetadataValue.path(str(png_path)),
            "requests_path": dg.MetadataValue.path(requests_path),
            **_conditions_metadata(result.run_conditions["engine_version"], profile.name),
        }
    )
    return dg.Output(value, metadata=metadata)


@dg.asset(
    partitions_def=eval_partitions,
    group_name=GROUP,
    io_manager_key="json_io",
    kinds={"pandas"},
    op_tags=CPU_STEP_TAGS,
    automation_condition=FOLLOW_IF_CHECKS_PASSED,
)
def target_comparison(
    context: dg.AssetExecutionContext,
    quality_scores: dict[str, Any],
    settings: EvalSettings,
) -> dg.Output[dict[str, Any]]:
    """Quality side by side with the published benchmark, the saved target and the latest
    measurement. Runs only when the blocking quality check passed; needs no perf run (perf has its
    own targets and checks on perf_scores)."""
    key = eval_key(context.partition_key)
    with _input_errors_final():
        config = find_model_config(split_model_part(key.model)[0], settings.configs_dir())
        spec = resolve_task(key.task)
        result_key = ResultKey.from_dict(quality_scores["result_key"])
        per_query_path = settings.artifacts().find_file(quality_scores["per_query_path"])
        per_query = pd.read_parquet(per_query_path) if per_query_path else None
        quality = compare(
            str(key),
            key.source,
            quality_scores["metrics"],
            per_query,
            config,
            spec,
            result_key,
            spec.rules.target_metrics,
            quality_scores.get("conditions"),
        )
    markdown = comparison_markdown(quality)
    md_path = settings.results_root() / "target_comparison" / f"{key.path_slug()}.md"
    atomic_write_text(md_path, markdown)
    value = {
        "key": str(key),
        "result_key": result_key.as_dict(),
        "quality": quality.rows,
        "markdown_path": str(md_path),
    }
    metadata: dict[str, Any] = {
        "comparison": dg.MetadataValue.md(markdown),
        "path": dg.MetadataValue.path(str(md_path)),
        "result_key": dg.MetadataValue.json(result_key.as_dict()),
    }
    for against in ("targets", "measurements", "benchmark"):
        worst = quality.worst_ratio(against)
        if worst is not None:
            metadata[f"quality_worst_ratio_vs_{against}"] = float(worst)
    return dg.Output(value, metadata=metadata)
