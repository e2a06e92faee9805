"""The nightly chain after the schedule (schedules.py): dataset run succeeded -> that task's eval
runs. The report follows in defs/reports/sensors.py."""

import dagster as dg

from sie_evals.defs.evals.partitions import EVAL_KEYS, eval_key, partition_key, task_to_eval_keys
from sie_evals.defs.evals.schedules import NIGHTLY_TAG, RUN_RETRY_TAGS, dataset_job, eval_job
from sie_evals.lib.gates.keys import EvalKey

BY_TASK = task_to_eval_keys(EVAL_KEYS)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[dataset_job],
    request_job=eval_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a nightly dataset run succeeds, launch the eval run of each of its partitions.",
)
def evals_after_dataset(context: dg.RunStatusSensorContext):
    run = context.dagster_run
    night = run.tags.get(NIGHTLY_TAG)
    task = run.tags.get("dagster/partition")
    if night is None or task is None:  # a dataset materialized by hand does not start evals
        yield dg.SkipReason(f"run {run.run_id} is not part of a nightly eval")
        return
    for key in BY_TASK.get(task, []):  # the cells a config declares, not the whole model x task grid
        yield dg.RunRequest(
            partition_key=partition_key(key),
            run_key=f"{run.run_id}:{key}",
            tags={NIGHTLY_TAG: night, **RUN_RETRY_TAGS},
        )


def _run_eval_key(run: dg.DagsterRun) -> EvalKey | None:
    try:
        return eval_key(run.tags.get("dagster/partition", ""))
    except ValueError:
        return None


def night_is_done(runs: list[dg.DagsterRun], eval_keys_by_task: dict[str, list[EvalKey]]) -> bool:
    """Every run of one night has finished and each successful dataset run has all its eval runs."""
    # a failed run about to be retried looks finished until its retry exists
    if not runs or not all(r.is_finished and r.tags.get("dagster/will_retry") != "true" for r in runs):
        return False
    expected = {
        key
        for r in runs
        if r.job_name == dataset_job.name and r.status == dg.DagsterRunStatus.SUCCESS
        for key in eval_keys_by_task.get(r.tags.get("dagster/partition", ""), [])
    }
    launched = {_run_eval_key(r) for r in runs if r.job_name == eval_job.name}
    return expected <= launched
