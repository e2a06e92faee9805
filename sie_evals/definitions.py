"""Dagster definitions for sie-evals (loaded by workspace.yaml and `dagster dev`)."""

import dagster as dg

from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
from sie_evals.defs.evals.checks import quality_vs_measurement, quality_vs_target
from sie_evals.defs.evals.resources import EvalSettings, JsonIOManager


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[task_dataset, embeddings, quality_scores],
        asset_checks=[quality_vs_target, quality_vs_measurement],
        resources={"settings": EvalSettings(), "json_io": JsonIOManager()},
        # One process per run: the model loads once and no step pays a subprocess start-up.
        executor=dg.in_process_executor,
    )
