"""Finesse assets: finesse_embeddings [model:task:source] -> finesse_scores [model:task:source].

Thin wrappers over sie_evals.finesse (the same functions the `finesse` CLI runs)."""

from pathlib import Path
from typing import Any

import dagster as dg

from sie_evals.defs.evals.resources import EvalSettings
from sie_evals.defs.executors import CPU_STEP_TAGS, GPU_STEP_TAGS
from sie_evals.defs.finesse.partitions import finesse_partitions
from sie_evals.defs.finesse.resources import FinesseRunConfig
from sie_evals.finesse.hashing import file_sha256
from sie_evals.finesse.probes.generate import generate
from sie_evals.finesse.results import score_file
from sie_evals.lib.config.model_config import find_model_config
from sie_evals.lib.core.errors import SieEvalsError
from sie_evals.lib.core.sources import DEFAULT_SOURCE
from sie_evals.lib.gates.conditions import from_finesse_results
from sie_evals.lib.gates.keys import EvalKey

GROUP = "finesse"


def _run_dir(settings: EvalSettings, key: EvalKey) -> Path:
    """Where a step writes before it publishes to the shared artifact store (lib/core/artifacts.py)."""
    return settings.artifacts().local_path(f"finesse/{key.path_slug()}")


@dg.asset(
    partitions_def=finesse_partitions,
    group_name=GROUP,
    io_manager_key="json_io",
    pool="gpu",
    op_tags=GPU_STEP_TAGS,  # the Celery/k8s queue of the accelerator workers, as the eval embeddings
    kinds={"safetensors"},
)
def finesse_embeddings(
    context: dg.AssetExecutionContext, settings: EvalSettings, config: FinesseRunConfig
) -> dg.Output[dict[str, Any]]:
    """Seeded probes (the task config's sampler) embedded by the partition's model (RSS or SRS)."""
    key = EvalKey.parse(context.partition_key)
    if key.source != DEFAULT_SOURCE:
        raise dg.Failure(f"{key}: Finesse runs through the {DEFAULT_SOURCE} engine only in this version")
    try:
        model = find_model_config(key.model, settings.configs_dir())
        cfg, path = config.task_config(key.task, model.model_id, settings.profile, settings.threads)
        out = generate(
            cfg, _run_dir(settings, key), path.parent, output_path=_run_dir(settings, key) / "embeddings.safetensors"
        )
    except SieEvalsError as err:
        raise dg.Failure(str(err), allow_retries=False) from None
    ref = settings.artifacts().publish(f"finesse/{key.path_slug()}/{out.name}")  # read by finesse_scores anywhere
    value = {"key": str(key), "path": ref, "sha256": file_sha256(out), "config_file": str(path)}
    return dg.Output(
        value,
        metadata={
            "path": dg.MetadataValue.path(ref),
            "lengths": f"{cfg.lengths()[0]}-{cfg.lengths()[-1]}",
            "samples_per_length": cfg.probe_config.samples_per_length,
            "profile": settings.profile,
        },
    )


@dg.asset(
    partitions_def=finesse_partitions, group_name=GROUP, io_manager_key="json_io", op_tags=CPU_STEP_TAGS, kinds={"json"}
)
def finesse_scores(
    context: dg.AssetExecutionContext, finesse_embeddings: dict[str, Any], settings: EvalSettings
) -> dg.Output[dict[str, Any]]:
    """RSS (0.18.9-exact TD/BU) or SRS (0.18.9-exact average_srs / average_pbi), whichever the task's config
    names; per-length spread, hashed (and signed when FINESSE_HMAC_KEY is set)."""
    key = EvalKey.parse(context.partition_key)
    path = settings.artifacts().fetch_file(finesse_embeddings["path"])
    if file_sha256(path) != finesse_embeddings["sha256"]:
        raise dg.Failure(f"{path} changed since finesse_embeddings wrote it: rematerialize finesse_embeddings")
    results_path, results = score_file(path, _run_dir(settings, key))
    metric = results["metric"]  # rss | srs
    main = f"average_{metric}"
    value = {
        "key": str(key),
        "profile": settings.profile,
        "metrics": {main: results[main]},
        "results_path": str(results_path),
        "metric": metric,
        "sampler": results["sampler"],
        "skipped_lengths": results["skipped_lengths"],
        "content_hash": results["content_hash"],
        "conditions": from_finesse_results(results),  # diffed when a drift check fails
    }
    metadata: dict[str, Any] = {
        main: float(results[main]),
        "sampler": results["sampler"],
        "complete": results["complete"],
        "skipped_lengths": dg.MetadataValue.json(results["skipped_lengths"]),
        "results_path": dg.MetadataValue.path(str(results_path)),
    }
    if metric == "srs":
        metadata["average_pbi"] = float(results["average_pbi"])
    else:
        value["final_formula"] = results["final_formula"]
        metadata["final_formula"] = results["final_formula"]
        metadata["average_total_latency_ms"] = float(results["average_total_latency"])
    for length, entry in results["length_scores"].items():
        if entry["stats"]["mean"] is not None:
            metadata[f"{metric}_L{length}"] = float(entry["stats"]["mean"])
    return dg.Output(value, metadata=metadata)
