"""Alert sensors: one alert per failed check evaluation (ERROR or WARN, blocking or not) and one per
failed run, to the destinations configured in the environment (lib/alerts.py).

A failed WARN or non-blocking check never fails its run, so no run-failure sensor can see it: the
check sensor reads the instance's check execution history instead, with a cursor that makes each
failed evaluation alert exactly once (lib/alerts.py: plan_check_alerts)."""

import dataclasses
import json
import os
from collections.abc import Sequence

import dagster as dg

from sie_evals.lib.alerts import (
    Alert,
    AlertDeliveryError,
    CheckCursor,
    CheckRecord,
    FailedMetric,
    deliver,
    first_check_cursor,
    plan_check_alerts,
    run_url,
    sinks_from_env,
)
from sie_evals.lib.keys import EvalKey

INTERVAL_ENV = "SIE_EVALS_ALERT_INTERVAL_S"
HISTORY_LIMIT = 1000  # check records read per check per tick


def _interval() -> int:
    return int(os.environ.get(INTERVAL_ENV, "30"))


def _key_parts(partition: str | None) -> dict[str, str | None]:
    try:
        key = EvalKey.parse(partition or "")
    except ValueError:
        return {"model": None, "task": None, "source": None}
    return {"model": key.model, "task": key.task, "source": key.source}


def _meta_value(metadata: dict, name: str):
    entry = metadata.get(name)
    return getattr(entry, "value", entry)


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
        partition=record.partition,
        metrics=metrics,
        description=evaluation.description,
        dedupe_key=f"check:{record.key.to_user_string()}:{record.id}",
        **_key_parts(record.partition),
    )


def _settled(record, instance: dg.DagsterInstance) -> bool:
    if record.status.value != "PLANNED":
        return True
    run = instance.get_run_by_id(record.run_id)
    return run is None or run.is_finished  # planned in a run that ended without evaluating it


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
        sinks = sinks_from_env()
        sent = 0
        errors = []
        for check_key in check_keys:
            name = check_key.to_user_string()
            rows = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=HISTORY_LIMIT)
            by_id = {r.id: r for r in rows}
            records = [CheckRecord(r.id, _settled(r, instance), r.status.value == "FAILED") for r in rows]
            if name not in state:  # a new sensor (or check) starts after the history it finds
                state[name] = first_check_cursor(records).to_json()
                continue
            cursor = CheckCursor.from_json(state[name])
            to_alert, next_cursor = plan_check_alerts(records, cursor)
            undelivered: set[int] = set()
            for record_id in to_alert:
                if undelivered:  # keep order: after one failure, retry the rest next tick
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
            return dg.SkipReason(f"{sent} alert(s) sent; {len(errors)} delivery failure(s), retried next tick")
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
        partition=partition,
        description=context.failure_event.message,
        dedupe_key=f"run:{run.run_id}",
        **_key_parts(partition),
    )
    sinks = sinks_from_env()
    if not sinks:
        context.log.warning(f"no alert destination configured; not sent: {alert.text()}")
        return
    deliver(alert, sinks)
