"""The last link of the nightly chain: every eval run of the night finished -> the report."""

import dagster as dg

from sie_evals.defs.evals.schedules import NIGHTLY_TAG, dataset_job
from sie_evals.defs.evals.sensors import BY_TASK, night_is_done
from sie_evals.defs.reports.schedules import report_job


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
    if not night_is_done(runs, BY_TASK):
        return dg.SkipReason(f"nightly eval {night} still running")
    context.update_cursor(night)
    return dg.RunRequest(run_key=f"report:{night}", tags={NIGHTLY_TAG: night})
