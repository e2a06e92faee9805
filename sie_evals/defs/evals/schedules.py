"""Jobs and the nightly schedule.

One run has one partition key, and datasets are keyed by task while evals are keyed by
model:task:source, so the nightly eval is a chain: the schedule refreshes every task's dataset, a
sensor (sensors.py) launches the eval runs of a task when its dataset run succeeds, and another
launches the report when the night's runs are done. The `gpu` pool (dagster.yaml) serialises the
embedding and perf steps however many runs are queued.

Cron and timezone: SIE_EVALS_NIGHTLY_CRON (default "0 2 * * *") and SIE_EVALS_NIGHTLY_TIMEZONE
(default UTC), read when the code location loads."""

import os

import dagster as dg

from sie_evals.defs.evals.assets import embeddings, perf_scores, quality_scores, target_comparison, task_dataset
from sie_evals.defs.evals.partitions import task_partitions

NIGHTLY_TAG = "sie/nightly"  # value: the schedule tick (ISO time); links a night's runs together
CRON_ENV, TIMEZONE_ENV = "SIE_EVALS_NIGHTLY_CRON", "SIE_EVALS_NIGHTLY_TIMEZONE"
# A crashed run worker (OOM, lost node) is retried once; a failed asset or check is not: asset steps
# have their own RetryPolicy for transient errors, and a drift failure must not be re-run into a pass.
RUN_RETRY_TAGS = {"dagster/max_retries": "1", "dagster/retry_on_asset_or_op_failure": "false"}

dataset_job = dg.define_asset_job(
    "dataset_job", selection=dg.AssetSelection.assets(task_dataset), description="Snapshot task datasets."
)
eval_job = dg.define_asset_job(
    "eval_job",
    selection=dg.AssetSelection.assets(embeddings, quality_scores, perf_scores, target_comparison),
    description="Embed, score, measure and compare one model:task:source (with its checks).",
)


def nightly_cron() -> str:
    return os.environ.get(CRON_ENV, "0 2 * * *")


def nightly_timezone() -> str:
    return os.environ.get(TIMEZONE_ENV, "UTC")


@dg.schedule(
    job=dataset_job,
    cron_schedule=nightly_cron(),
    execution_timezone=nightly_timezone(),
    description="Nightly eval of every partition: dataset refresh first; sensors chain evals and report.",
)
def nightly_evals(context: dg.ScheduleEvaluationContext):
    tick = context.scheduled_execution_time.isoformat()
    for task in task_partitions.get_partition_keys():
        yield dg.RunRequest(partition_key=task, run_key=f"dataset:{task}", tags={NIGHTLY_TAG: tick, **RUN_RETRY_TAGS})
