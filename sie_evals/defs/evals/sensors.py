"""Sensors of the eval graph: the partitions follow the configs, and the automation conditions run.

- `eval_cells_sync`: each tick, the eval and Finesse partitions become exactly the cells the configs
  directory declares (partitions.py): a new model config needs no "Reload definitions".
- `default_automation_condition_sensor`: evaluates the assets' automation conditions (schedules.py).
  Its runs carry RUN_RETRY_TAGS: a crashed run is retried once, a failed step or check is not."""

import dagster as dg

from sie_evals.defs.evals.partitions import sync_requests
from sie_evals.defs.evals.resources import EvalSettings
from sie_evals.defs.evals.schedules import RUN_RETRY_TAGS

SYNC_INTERVAL_S = 30


@dg.sensor(
    minimum_interval_seconds=SYNC_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Keep the eval and Finesse partitions equal to the cells the model configs declare.",
)
def eval_cells_sync(context: dg.SensorEvaluationContext, settings: EvalSettings) -> dg.SensorResult:
    requests = sync_requests(context.instance, settings.configs_dir())
    for r in requests:
        verb = "adding" if isinstance(r, dg.AddDynamicPartitionsRequest) else "deleting"
        context.log.info(f"{r.partitions_def_name}: {verb} {', '.join(r.partition_keys)}")
    skip = None if requests else "partitions already match the model configs"
    return dg.SensorResult(dynamic_partitions_requests=requests, skip_reason=skip)


automation_sensor = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=dg.AssetSelection.all(),
    run_tags=RUN_RETRY_TAGS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Nightly datasets on the cron, evals after their dataset, the report after the evals.",
)
