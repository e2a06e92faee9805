"""Alert bookkeeping and delivery, without Dagster: exactly once, even when a record is created as
"planned" before its result exists, and retried after a failed delivery."""

import json

import pytest

from sie_evals.lib.reporting.alerts import (
    Alert,
    AlertDeliveryError,
    CheckCursor,
    CheckRecord,
    FailedMetric,
    WebhookSink,
    plan_check_alerts,
    sinks_from_env,
)
from sie_evals_tests.webhook import WebhookReceiver


def rec(i, state):
    return CheckRecord(i, settled=state != "planned", failed=state == "failed")


def test_planned_record_alerts_once_when_it_fails_later():
    cursor = CheckCursor()
    alert, cursor = plan_check_alerts([rec(1, "passed"), rec(2, "planned"), rec(3, "failed")], cursor)
    assert alert == [3] and cursor.low == 1 and cursor.seen == {3}
    alert, cursor = plan_check_alerts([rec(1, "passed"), rec(2, "failed"), rec(3, "failed")], cursor)
    assert alert == [2] and cursor.low == 3 and cursor.seen == set()
    alert, cursor = plan_check_alerts([rec(1, "passed"), rec(2, "failed"), rec(3, "failed"), rec(4, "passed")], cursor)
    assert alert == [] and cursor.low == 4


def test_cursor_survives_json():
    again = CheckCursor.from_json(json.loads(json.dumps(CheckCursor(3, {5, 7}).to_json())))
    assert again.low == 3 and again.seen == {5, 7}
    assert plan_check_alerts([rec(5, "failed"), rec(6, "failed"), rec(7, "failed")], again)[0] == [6]


def test_sinks_from_env_only():
    assert sinks_from_env({}) == []
    env = {"SIE_EVALS_ALERT_WEBHOOK_URL": "http://127.0.0.1:1/x", "SLACK_BOT_TOKEN": "xoxb-1"}
    assert [s.name for s in sinks_from_env(env)] == ["webhook"]  # Slack needs a channel too
    env["SIE_EVALS_SLACK_CHANNEL"] = "#evals"
    sinks = sinks_from_env(env)
    assert [s.name for s in sinks] == ["webhook", "slack"]
    assert "xoxb" not in repr(sinks[1])  # the token never shows in logs


@pytest.fixture
def flaky():
    receiver = WebhookReceiver("/hook?token=secret")
    yield receiver
    receiver.close()


ALERT = Alert(
    kind="check",
    title="quality_scores.quality_vs_target",
    severity="ERROR",
    run_id="abc",
    run_url="http://127.0.0.1:3000/runs/abc",
    model="m",
    task="beir/SciFact",
    source="local",
    metrics=(FailedMetric("ndcg_at_10", 0.6, 0.65, 0.923, 0.99),),
)


def test_webhook_retries_5xx_then_delivers(flaky):
    flaky.replies = [503, 200]
    WebhookSink(flaky.url).send(ALERT)
    assert len(flaky.bodies) == 2
    body = flaky.bodies[-1]
    assert body["alert"]["task"] == "beir/SciFact"
    assert "ndcg_at_10: value 0.6 vs target 0.65" in body["text"] and "/runs/abc" in body["text"]


def test_webhook_client_error_is_not_retried_and_hides_the_secret(flaky):
    flaky.replies = [404]
    with pytest.raises(AlertDeliveryError) as err:
        WebhookSink(flaky.url).send(ALERT)
    assert len(flaky.bodies) == 1 and "secret" not in str(err.value)
