"""Alert sensors: one alert per failed check evaluation (ERROR or WARN, blocking or not) and one per
failed run, to the destinations configured in the environment (lib/reporting/alerts.py).

A failed WARN or non-blocking check never fails its run, so no run-failure sensor can see it: the
check sensor reads the instance's check execution history instead, with a cursor that makes each
failed evaluation alert exactly once (lib/reporting/alerts.py: plan_check_alerts)."""

import dataclasses
import json
import os
from collections.abc import Sequence

import dagster as dg

from sie_evals.defs.evals.partitions import eval_key
from sie_evals.lib.core.errors import ConfigError
from sie_evals.lib.reporting.alerts import (
    ALERT_QUERIES,
    Alert,
    AlertDeliveryError,
    CheckCursor,
    CheckRecord,
    FailedMetric,
    check_url,
    deliver,
    plan_check_alerts,
    run_url,
    sinks_from_env,
)

INTERVAL_ENV = "SIE_EVALS_ALERT_INTERVAL_S"
PAGE = 500  # check execution records read per query


def _interval() -> int:
    return int(os.environ.get(INTERVAL_ENV, "30"))


def _key_parts(partition: str | None) -> dict[str, str | None]:
    """Model, task and source of an eval or Finesse partition (`model:task:source`); None for anything
    else (an unpartitioned run)."""
    try:
        key = eval_key(partition or "")
    except ValueError:
        return {"partition": partition, "model": None, "task": None, "source": None}
    return {"partition": str(key), "model": key.model, "task": key.task, "source": key.source}


def _meta_value(metadata: dict, name: str):
    entry = metadata.get(name)
    return getattr(entry, "value", entry)


def _diagnosis(metadata: dict) -> str | None:
    value = _meta_value(metadata, "diagnosis")
    return value if isinstance(value, str) and value != "-" else None


def check_alert(record) -> Alert:
    """An Alert from a FAILED AssetCheckExecutionRecord."""
    evaluation = record.event.dagster_event.event_specific_data
    metadata = dict(evaluation.metadata or {})
    failed = _meta_value(metadata, "failed_metrics") or []
    metrics = tuple(
        FailedMetric(m["metric"], m.get("value"), m.get("reference"), m.get("ratio"), m.get("margin")) for m in failed
    )
    return Alert(
        kind="check",
        title=f"{record.key.asset_key.to_user_string()}.{record.key.name}",
        severity=evaluation.severity.value,
        run_id=record.run_id,
        run_url=run_url(record.run_id),
        metrics=metrics,
        description=evaluation.description,
        dedupe_key=f"check:{record.key.to_user_string()}:{record.id}",
        diagnosis=_diagnosis(metadata),
        changes=tuple(_meta_value(metadata, "changes_since_last_pass") or ()),
        check_url=check_url(record.key.asset_key.path, record.key.name, record.partition),
        **_regressed(metadata),
        **_key_parts(record.partition),
    )


def _regressed(metadata: dict) -> dict:
    """The metric and the ids of the top regressed queries a failed quality check recorded."""
    regressed = _meta_value(metadata, "regressed_query_ids") or {}
    queries = regressed.get("queries") or []
    return {
        "regressed_metric": regressed.get("metric"),
        "regressed_queries": tuple(str(q["query_id"]) for q in queries[:ALERT_QUERIES]),
    }


def _history_since(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, low: int) -> list:
    """Every execution record of the check with id > low (paged: none is skipped however many)."""
    rows: list = []
    before: int | None = None
    while True:
        page = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=PAGE, cursor=before)
        fresh = [r for r in page if r.id > low]
        rows.extend(fresh)
        if len(page) < PAGE or len(fresh) < len(page):
            return rows
        before = page[-1].id  # newest first: the next page holds smaller ids


def _check_records(
    instance: dg.DagsterInstance, check_key: dg.AssetCheckKey, low: int, finished: dict[str, bool]
) -> tuple[list[CheckRecord], dict[int, object]]:
    """Records above `low`, each settled or not. A record still PLANNED in a run that has ended was never
    evaluated. The history is read again after looking the runs up: a result written between the two
    reads would otherwise pass for "never evaluated" and its alert would be lost."""

    def run_ended(run_id: str) -> bool:
        if run_id not in finished:  # one lookup per run per tick
            run = instance.get_run_by_id(run_id)
            finished[run_id] = run is None or run.is_finished
        return finished[run_id]

    rows = _history_since(instance, check_key, low)
    planned_in_ended_runs = [r for r in rows if r.status.value == "PLANNED" and run_ended(r.run_id)]
    if planned_in_ended_runs:
        rows = _history_since(instance, check_key, low)
    records = [
        CheckRecord(
            r.id,
            settled=r.status.value != "PLANNED" or run_ended(r.run_id),
            failed=r.status.value == "FAILED",
        )
        for r in rows
    ]
    return records, {r.id: r for r in rows}


def make_check_failure_sensor(check_keys: Sequence[dg.AssetCheckKey]) -> dg.SensorDefinition:
    @dg.sensor(
        name="check_failure_alerts",
        minimum_interval_seconds=_interval(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="One alert per failed asset check evaluation (webhook / Slack from the environment).",
    )
    def check_failure_alerts(context: dg.SensorEvaluationContext):
        instance = context.instance
        state = json.loads(context.cursor) if context.cursor else {}
        try:
            sinks = sinks_from_env()
        except ConfigError as exc:  # the cursor stays: every alert goes out once the setting is fixed
            context.log.error(f"alerts not sent: {exc}")
            return dg.SkipReason(f"alert destinations misconfigured: {exc}")
        finished: dict[str, bool] = {}
        sent = 0
        errors: list[str] = []
        for check_key in check_keys:
            name = check_key.to_user_string()
            if name not in state:  # a new sensor (or check) starts after the history it finds
                latest = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=1)
                state[name] = CheckCursor(latest[0].id if latest else 0).to_json()
                continue
            cursor = CheckCursor.from_json(state[name])
            records, by_id = _check_records(instance, check_key, cursor.low, finished)
            to_alert, next_cursor = plan_check_alerts(records, cursor)
            undelivered: set[int] = set()
            for record_id in to_alert:
                if errors:  # a destination is down: keep the rest (of every check) for the next tick
                    undelivered.add(record_id)
                    continue
                alert = check_alert(by_id[record_id])
                if not sinks:
                    context.log.warning(f"no alert destination configured; not sent: {alert.text()}")
                    continue
                try:
                    deliver(alert, sinks)
                    sent += 1
                except AlertDeliveryError as exc:
                    errors.append(str(exc))
                    undelivered.add(record_id)
            if undelivered:  # not settled as far as the cursor knows: they are tried again next tick
                records = [dataclasses.replace(r, settled=False) if r.id in undelivered else r for r in records]
                next_cursor = plan_check_alerts(records, cursor)[1]
            state[name] = next_cursor.to_json()
        context.update_cursor(json.dumps(state, sort_keys=True))
        if errors:  # not raised: a failed tick would drop the cursor and re-send what was delivered
            context.log.error("alert delivery failed, will retry: " + "; ".join(errors))
            return dg.SkipReason(f"{sent} alert(s) sent; delivery failed ({errors[0]}), retried next tick")
        return dg.SkipReason(f"{sent} alert(s) sent")

    return check_failure_alerts


@dg.run_failure_sensor(
    name="run_failure_alerts",
    monitor_all_code_locations=True,  # runs launched by `dagster asset materialize -m` too
    minimum_interval_seconds=_interval(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="One alert per failed run (webhook / Slack from the environment).",
)
def run_failure_alerts(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    partition = run.tags.get("dagster/partition")
    alert = Alert(
        kind="run",
        title=run.job_name,
        severity="FAILURE",
        run_id=run.run_id,
        run_url=run_url(run.run_id),
        description=context.failure_event.message,
        dedupe_key=f"run:{run.run_id}",
        **_key_parts(partition),
    )
    try:
        sinks = sinks_from_env()
        if not sinks:
            context.log.warning(f"no alert destination configured; not sent: {alert.text()}")
            return
        deliver(alert, sinks)
    except (AlertDeliveryError, ConfigError) as exc:
        # Dagster moves a run-status sensor's cursor past the run even when the tick fails, so a retry
        # cannot be had by raising: say so loudly in the sensor's log instead.
        context.log.error(f"alert for failed run {run.run_id} not delivered: {exc}")
