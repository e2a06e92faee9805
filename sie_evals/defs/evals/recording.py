"""Record CLI results in the Dagster instance so they show in the UI beside scheduled runs.

A partition (a declared cell `model:task:source`, see partitions.py) stands for the full split with
the default profile (an output profile's `model@profile:task:source` cell for that profile); a quality
run lands on `quality_scores`, a perf run on `perf_scores`. A slice (`--limit-queries`) or another
profile is not that result, so it is not recorded at all (the CLI says so): plotting it on the
partition's line would mix unlike numbers."""

import dagster as dg

from sie_evals.defs.evals.partitions import EVAL_CELLS, eval_keys, partition_key
from sie_evals.defs.evals.profile_partitions import partition_profiles
from sie_evals.lib.config.model_config import ModelConfig
from sie_evals.lib.gates.keys import DEFAULT_PROFILE, EvalKey, ResultKey, ResultKind, model_part
from sie_evals.lib.harness.report import PERF_TABLE_METRICS, headline_metrics


def record_report(
    config: ModelConfig,
    report: dict,
    keys: dict[str, ResultKey],
    instance: dg.DagsterInstance | None = None,
) -> tuple[list[str], list[str]]:
    """One runless materialization per computed source on the asset of its eval type. Returns the
    partitions recorded and a reason for each source that was not."""
    recorded: list[str] = []
    skipped: list[str] = []
    known = set(eval_keys([config]))
    for source, result in report["sources"].items():
        if result.get("kind") != "computed":
            continue
        key = keys[source]
        # output profiles (sparse, multivector, MUVERA) have partitions of their own: model@profile
        own_partition = key.profile in partition_profiles(config)
        eval_key = EvalKey(model_part(key.model, key.profile if own_partition else None), key.task, source)
        partition = str(eval_key)
        if key.slice is not None or not (own_partition or key.profile == DEFAULT_PROFILE):
            skipped.append(
                f"{source}: {key.variant} with profile {key.profile} is not what partition {partition} holds "
                "(full split, default profile)"
            )
            continue
        if eval_key not in known:
            skipped.append(f"{source}: no partition {partition} (the model config does not declare it)")
            continue
        perf = key.kind is ResultKind.perf
        names = PERF_TABLE_METRICS if perf else headline_metrics(report["task_type"], result["metrics"])
        metadata = {m: float(result["metrics"][m]) for m in names if m in result["metrics"]}
        metadata.update(
            {
                "recorded_by": "sie-bench eval (CLI)",
                "dataset_hash": report["dataset"]["content_hash"],
                "split": report["split"],
                "variant": key.variant,
                "profile": report["profile"],
                "engine_version": result["run_conditions"]["engine_version"],
                "result_key": dg.MetadataValue.json(key.as_dict()),
            }
        )
        if not perf:
            metadata["main_score"] = float(result["main_score"])
            metadata["main_score_name"] = report["main_score"]
        instance = instance or dg.DagsterInstance.get()
        if not instance.has_dynamic_partition(EVAL_CELLS, partition):  # before the sync sensor's first tick
            instance.add_dynamic_partitions(EVAL_CELLS, [partition])
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key="perf_scores" if perf else "quality_scores",
                partition=partition_key(eval_key),
                metadata=metadata,
            )
        )
        recorded.append(f"{'perf_scores' if perf else 'quality_scores'}[{partition}]")
    return recorded, skipped
