"""Record CLI results in the Dagster instance so they show in the UI beside scheduled runs."""

import dagster as dg

from sie_evals.lib.config.model_config import ModelConfig
from sie_evals.lib.engines.outputs import partition_profiles
from sie_evals.lib.gates.keys import EvalKey, model_part
from sie_evals.lib.harness.report import TABLE_METRICS_BY_TYPE


def record_quality_report(config: ModelConfig, report: dict, instance: dg.DagsterInstance | None = None) -> list[str]:
    """One runless materialization of `quality_scores` per source, keyed like the asset partitions."""
    instance = instance or dg.DagsterInstance.get()
    keys = []
    for source, result in report["sources"].items():
        if result.get("kind") != "computed":
            continue
        profile = report["profile"] if report["profile"] in partition_profiles(config) else None
        key = str(EvalKey(model_part(config.short_name, profile), report["task"], source))
        metadata = {
            m: float(result["metrics"][m]) for m in TABLE_METRICS_BY_TYPE[report["task_type"]] if m in result["metrics"]
        }
        metadata.update(
            {
                "main_score": float(result["main_score"]),
                "recorded_by": "sie-bench eval (CLI)",
                "dataset_hash": report["dataset"]["content_hash"],
                "split": report["split"],
                "profile": report["profile"],
                "engine_version": result["run_conditions"]["engine_version"],
            }
        )
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key="quality_scores", partition=key, metadata=metadata)
        )
        keys.append(key)
    return keys
