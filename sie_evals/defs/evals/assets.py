"""Eval assets: task_dataset [task] -> embeddings [model:task:source] -> quality_scores [model:task:source].

Thin wrappers: each calls the same library functions the CLI runs, and records what it did as
metadata (numeric metrics plot over time in the UI)."""

import time
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from sie_evals.defs.evals.partitions import eval_partitions, task_partitions, task_to_evals
from sie_evals.defs.evals.resources import EvalSettings
from sie_evals.lib.atomic import atomic_write
from sie_evals.lib.engines import EmbedKind, create_engine
from sie_evals.lib.evaluation import embed_task, load_task
from sie_evals.lib.keys import EvalKey, path_slug
from sie_evals.lib.model_config import find_model_config
from sie_evals.lib.report import TABLE_METRICS_BY_TYPE
from sie_evals.lib.scoring import score_task
from sie_evals.lib.tasks import resolve_task
from sie_evals.lib.tasks.snapshot import read_snapshot, write_snapshot

GROUP = "evals"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file handle: np.save on a path would append '.npy' to the temp name
            np.save(fh, arr, allow_pickle=False)

    atomic_write(path, write)


def _load_npy(path: str) -> np.ndarray:
    return np.load(path, allow_pickle=False)


@dg.asset(partitions_def=task_partitions, group_name=GROUP, io_manager_key="json_io", kinds={"parquet"})
def task_dataset(context: dg.AssetExecutionContext, settings: EvalSettings) -> dg.Output[dict[str, Any]]:
    """Corpus, queries and qrels of one task split, snapshotted as Parquet with a content hash."""
    spec, data = load_task(context.partition_key, settings.data_options())
    folder = settings.results_root() / "datasets" / path_slug(spec.task_id) / data.split / data.content_hash[:16]
    write_snapshot(data, folder)
    value = {**data.describe(), "snapshot_dir": str(folder)}
    return dg.Output(
        value,
        metadata={
            **data.counts,
            "content_hash": data.content_hash,
            "origin": data.origin,
            "snapshot_dir": dg.MetadataValue.path(str(folder)),
        },
    )


@dg.asset(
    partitions_def=eval_partitions,
    group_name=GROUP,
    io_manager_key="json_io",
    ins={"task_dataset": dg.AssetIn(partition_mapping=task_to_evals)},
    pool="gpu",  # one embedding run per accelerator at a time (limit in dagster.yaml)
    kinds={"numpy"},
)
def embeddings(
    context: dg.AssetExecutionContext, task_dataset: dict[str, Any], settings: EvalSettings
) -> dg.Output[dict[str, Any]]:
    """Query and document vectors for one model:task:source, through the embedding cache."""
    key = EvalKey.parse(context.partition_key)
    config = find_model_config(key.model, settings.configs_dir())
    profile = config.resolve_profile(settings.profile)
    spec = resolve_task(key.task)
    data = read_snapshot(Path(task_dataset["snapshot_dir"]))
    engine = create_engine(key.source, config, profile, **settings.engine_options().for_engine())
    with engine:
        emb = embed_task(engine, spec, data, settings.cache())
    folder = settings.results_root() / "embeddings" / key.path_slug() / data.content_hash[:16]
    for kind, vectors in emb.vectors.items():
        _save_npy(folder / f"{kind.value}.npy", vectors)
    value = {
        "key": str(key),
        "profile": profile.name,
        "content_hash": data.content_hash,
        "vectors": {kind.value: str(folder / f"{kind.value}.npy") for kind in emb.vectors},
        "dims": emb.dims,
        "engine": emb.engine_info,
        "cache": emb.cache.as_dict(),
    }
    return dg.Output(
        value,
        metadata={
            "dims": value["dims"],
            **{f"{kind.value}_vectors": int(v.shape[0]) for kind, v in emb.vectors.items()},
            "embed_seconds": round(emb.seconds, 3),
            "forward_calls": emb.forward_calls,
            "cache_hits": emb.cache.hits,
            "cache_misses": emb.cache.misses,
            "engine_version": emb.engine_info["version"],
            "profile": profile.name,
        },
    )


@dg.asset(
    partitions_def=eval_partitions,
    group_name=GROUP,
    io_manager_key="json_io",
    ins={"task_dataset": dg.AssetIn(partition_mapping=task_to_evals)},
    kinds={"pandas"},
)
def quality_scores(
    context: dg.AssetExecutionContext, task_dataset: dict[str, Any], embeddings: dict[str, Any], settings: EvalSettings
) -> dg.Output[dict[str, Any]]:
    """MTEB-exact retrieval metrics (aggregate + per query) from the cached embeddings."""
    key = EvalKey.parse(context.partition_key)
    spec = resolve_task(key.task)
    data = read_snapshot(Path(task_dataset["snapshot_dir"]))
    if embeddings["content_hash"] != data.content_hash:
        raise dg.Failure(
            f"embeddings for {key} were computed on dataset {embeddings['content_hash'][:12]}, "
            f"not the current {data.content_hash[:12]}: rematerialize embeddings"
        )
    start = time.perf_counter()
    vectors = {EmbedKind(kind): _load_npy(path) for kind, path in embeddings["vectors"].items()}
    metrics, per_query = score_task(spec, data, vectors)
    pq_path = settings.results_root() / "quality_scores" / f"{key.path_slug()}.per_query.parquet"
    atomic_write(pq_path, lambda tmp: per_query.to_parquet(tmp, index=False))
    value = {
        "key": str(key),
        "task": spec.task_id,
        "split": data.split,
        "main_score": spec.rules.main_score,
        "metrics": metrics,
        "per_query_path": str(pq_path),
        "dataset": data.describe(),
        "engine": embeddings["engine"],
        "profile": embeddings["profile"],
    }
    metadata: dict[str, Any] = {m: float(metrics[m]) for m in TABLE_METRICS_BY_TYPE[spec.type] if m in metrics}
    metadata.update(
        {
            "main_score": float(metrics[spec.rules.main_score]),
            "score_seconds": round(time.perf_counter() - start, 3),
            "queries": len(per_query),
            "dataset_hash": data.content_hash,
            "per_query_path": dg.MetadataValue.path(str(pq_path)),
        }
    )
    return dg.Output(value, metadata=metadata)
