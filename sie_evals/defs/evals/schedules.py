"""The nightly eval, declared on the assets (Dagster declarative automation) instead of a schedule and
sensors: the `default_automation_condition_sensor` (sensors.py) evaluates these conditions.

- `task_dataset`: `NIGHTLY`, on_cron: every declared cell's dataset once per cron tick.
- embeddings, quality_scores, perf_scores: `FOLLOW`, eager: when a parent updates in a run. On the tick that
  requests a cell's dataset they are requested with it, so one run per cell holds the whole chain.
- target_comparison: `FOLLOW` unless a blocking check of a parent failed (and the parent is not being
  requested again): within a run the failed check blocks it, and a later tick does not run it either.
- eval_report: `AFTER_EVALS`: once some eval updated or was requested by a tick (its run may have failed)
  and none is requested, queued or running.
A result the CLI records (a runless materialization, recording.py) updates the report but triggers no
eval asset: those read their parents' outputs, which only a run writes.

Cron and timezone: SIE_EVALS_NIGHTLY_CRON (default "0 2 * * *") and SIE_EVALS_NIGHTLY_TIMEZONE
(default UTC), read when the code location loads. The `gpu` pool (dagster.yaml) serialises the
embedding and perf steps however many runs are queued."""

import os

import dagster as dg

AC = dg.AutomationCondition
CRON_ENV, TIMEZONE_ENV = "SIE_EVALS_NIGHTLY_CRON", "SIE_EVALS_NIGHTLY_TIMEZONE"
# A crashed run worker (OOM, lost node) is retried once; a failed asset or check is not: asset steps
# have their own RetryPolicy for transient errors, and a drift failure must not be re-run into a pass.
RUN_RETRY_TAGS = {"dagster/max_retries": "1", "dagster/retry_on_asset_or_op_failure": "false"}


def nightly_cron() -> str:
    return os.environ.get(CRON_ENV, "0 2 * * *")


def nightly_timezone() -> str:
    return os.environ.get(TIMEZONE_ENV, "UTC")


def _deps_updated_by_a_run() -> dg.AutomationCondition:
    """eager()'s any_deps_updated without runless updates (a CLI-recorded result has no output to read)."""
    updated = AC.newly_updated() & ~AC.executed_with_root_target() & AC.any_new_update_has_run_tags()
    return AC.any_deps_match(updated.with_label("updated_by_a_run") | AC.will_be_requested()).with_label(
        "any_deps_updated_by_a_run"
    )


NIGHTLY = AC.on_cron(nightly_cron(), nightly_timezone())
# eager() without its `newly_missing` trigger: a cell the sync sensor adds waits for its dataset's night,
# and a cell whose run failed before materializing is not re-run by the next tick.
FOLLOW = (
    AC.in_latest_time_window()
    & _deps_updated_by_a_run().since_last_handled()
    & ~AC.any_deps_missing()
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
).with_label("eager on run updates")
# not all_deps_blocking_checks_passed(): a check is never "requested" itself (it runs with its asset)
_FAILED_BLOCKING_CHECK = AC.any_checks_match(AC.check_failed(), blocking_only=True) & ~AC.will_be_requested()
FOLLOW_IF_CHECKS_PASSED = (FOLLOW & ~AC.any_deps_match(_FAILED_BLOCKING_CHECK)).with_label(
    "eager, no failed blocking check upstream"
)
# An eval the automation requested counts as an update whether its run succeeded or not: a night whose
# every cell failed updates nothing, and its report (which says which cells failed and why) is then the
# one place that tells. A run launched by hand (backfill, UI) is reported when it updates something.
_EVALS_RAN = AC.any_deps_updated() | AC.any_deps_match(AC.newly_requested()).with_label("any_deps_requested")
AFTER_EVALS = (
    _EVALS_RAN.since_last_handled()
    & ~AC.any_deps_match(AC.will_be_requested())
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
).with_label("after the evals")
