"""The nightly chain after the schedule (schedules.py): dataset run succeeded -> that task's eval
runs; every eval run of the night finished -> the report."""

import dagster as dg

from sie_evals.defs.evals.partitions import EVAL_KEYS, task_to_eval_keys
from sie_evals.defs.evals.schedules import NIGHTLY_TAG, RUN_RETRY_TAGS, dataset_job, eval_job, report_job

_BY_TASK = task_to_eval_keys(EVAL_KEYS)


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
    for key in _BY_TASK.get(task, []):
        yield dg.RunRequest(
            partition_key=key, run_key=f"{run.run_id}:{key}", tags={NIGHTLY_TAG: night, **RUN_RETRY_TAGS}
        )


def night_is_done(runs: list[dg.DagsterRun], eval_keys_by_task: dict[str, list[str]]) -> bool:
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
    launched = {r.tags.get("dagster/partition") for r in runs if r.job_name == eval_job.name}
    return expected <= launched


@dg.sensor(
    job=report_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Materialize eval_report once the latest nightly eval has finished.",
)
def report_after_nightly(context: dg.SensorEvaluationContext):
    latest = context.instance.get_runs(dg.RunsFilter(job_name=dataset_job.name), limit=50)
    nights = [r.tags[NIGHTLY_TAG] for r in latest if NIGHTLY_TAG in r.tags]
    if not nights:
        return dg.SkipReason("no nightly run yet")
    night = nights[0]
    if night == context.cursor:
        return dg.SkipReason(f"report for {night} already requested")
    runs = list(context.instance.get_runs(dg.RunsFilter(tags={NIGHTLY_TAG: night})))
    runs = [r for r in runs if r.job_name != report_job.name]
    if not night_is_done(runs, _BY_TASK):
        return dg.SkipReason(f"nightly eval {night} still running")
    context.update_cursor(night)
    return dg.RunRequest(run_key=f"report:{night}", tags={NIGHTLY_TAG: night})
