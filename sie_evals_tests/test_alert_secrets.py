"""Secrets in URLs never reach a message (issue 22 item 9, defect N114): a webhook URL without a scheme
is rejected when the sinks are built from the environment, without printing its path; a delivery
failure names the webhook's scheme://host only; other URLs lose their user info and query values."""

import logging
import secrets
import socket
import traceback

import dagster as dg
import pytest

from sie_evals.lib.core.errors import ConfigError, EngineError
from sie_evals.lib.core.urls import redact_url, webhook_origin
from sie_evals.lib.reporting.alerts import Alert, AlertDeliveryError, deliver, run_url, sinks_from_env
from sie_evals_tests.webhook import WebhookReceiver

TOKEN = "PATHSECRET" + secrets.token_hex(6)
ALERT = Alert(kind="run", title="job", severity="FAILURE", run_id="r1", run_url="http://127.0.0.1:3000/runs/r1")


def exception_text(exc: BaseException) -> str:
    """Everything an exception can show: its message, repr, formatted traceback, and its chain."""
    parts = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"hooks.slack.com/services/T0/B0/{TOKEN}", "no scheme"),  # the N114 reproduction
        (f"//hooks.slack.com/services/T0/B0/{TOKEN}", "no scheme"),
        (f"ftp://hooks.slack.com/services/{TOKEN}", "scheme is 'ftp'"),
        (f"https:///services/{TOKEN}", "no host"),
        (f"https://hooks.slack.com:notaport/services/{TOKEN}", "port"),
    ],
)
def test_a_malformed_webhook_url_is_rejected_when_sinks_are_built_without_printing_it(url, why, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as err:
        sinks_from_env({"SIE_EVALS_ALERT_WEBHOOK_URL": url})
    text = exception_text(err.value)
    assert "SIE_EVALS_ALERT_WEBHOOK_URL" in str(err.value) and why in str(err.value)
    assert err.value.exit_code == 2
    assert TOKEN not in text and "services" not in text and TOKEN not in caplog.text


def test_a_delivery_failure_never_shows_the_webhook_path_or_query(caplog):
    caplog.set_level(logging.DEBUG)
    port = closed_port()
    url = f"http://alice:pw{TOKEN}@127.0.0.1:{port}/services/T0/B0/{TOKEN}?token=q{TOKEN}"
    sinks = sinks_from_env({"SIE_EVALS_ALERT_WEBHOOK_URL": url})  # well-formed: accepted
    with pytest.raises(AlertDeliveryError) as err:
        deliver(ALERT, sinks)
    assert f"alert webhook at http://127.0.0.1:{port} failed" in str(err.value)
    assert "Connection refused" in str(err.value)
    text = exception_text(err.value) + repr(sinks)
    assert TOKEN not in text and "/services" not in text and "token=" not in text
    assert TOKEN not in caplog.text


def test_a_webhook_error_quoting_its_url_is_redacted(caplog):
    """A sink built directly (not from the environment) with a URL urllib cannot open: urllib's error
    quotes the whole URL, path included."""
    from sie_evals.lib.reporting.alerts import WebhookSink

    with pytest.raises(AlertDeliveryError) as err:
        deliver(ALERT, [WebhookSink(f"hooks.slack.com/services/T0/B0/{TOKEN}", attempts=1)])
    assert "unknown url type" in str(err.value)
    assert TOKEN not in exception_text(err.value) and "services" not in str(err.value)


def test_the_check_sensor_skips_and_keeps_its_cursor_when_the_webhook_is_malformed(monkeypatch, caplog):
    from sie_evals.defs.alerts.sensors import make_check_failure_sensor

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SIE_EVALS_ALERT_WEBHOOK_URL", f"hooks.slack.com/services/T0/B0/{TOKEN}")
    sensor = make_check_failure_sensor([dg.AssetCheckKey(dg.AssetKey("quality_scores"), "quality_vs_target")])
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance)
        result = sensor(context)
        assert isinstance(result, dg.SkipReason)
        assert "SIE_EVALS_ALERT_WEBHOOK_URL" in result.skip_message and TOKEN not in result.skip_message
        assert context.cursor is None  # nothing was marked handled: alerts go out once the URL is fixed
    assert TOKEN not in caplog.text


def test_urls_in_messages_lose_user_info_and_query_values(monkeypatch):
    assert redact_url(f"http://u:{TOKEN}@h:1/v1?api_key={TOKEN}&x=1") == "http://***@h:1/v1?api_key=***&x=***"
    assert webhook_origin(f"https://u:{TOKEN}@hooks.slack.com/services/{TOKEN}?t={TOKEN}") == "https://hooks.slack.com"
    monkeypatch.setenv("SIE_EVALS_DAGSTER_URL", f"https://dagster.example/?token={TOKEN}")
    assert TOKEN not in run_url("r1")


def test_an_alert_delivered_to_a_real_receiver_carries_no_token_in_its_run_link(monkeypatch):
    monkeypatch.setenv("SIE_EVALS_DAGSTER_URL", f"https://dagster.example/?token={TOKEN}")
    receiver = WebhookReceiver(f"/services/{TOKEN}")
    try:
        sinks = sinks_from_env({"SIE_EVALS_ALERT_WEBHOOK_URL": receiver.url})
        deliver(Alert(kind="run", title="job", severity="FAILURE", run_id="r1", run_url=run_url("r1")), sinks)
        assert len(receiver.bodies) == 1 and TOKEN not in str(receiver.bodies[0])
    finally:
        receiver.close()


def test_an_engine_url_with_a_query_secret_is_redacted_in_its_error(minilm):
    from sie_evals.lib.engines import EmbedKind, create_engine

    url = f"http://127.0.0.1:{closed_port()}/?api_key={TOKEN}"
    engine = create_engine("openai", minilm, minilm.resolve_profile("default"), openai_url=url)
    engine.retry = engine.retry.__class__(retries=0)
    with engine, pytest.raises(EngineError) as err:
        engine.embed(["a protein"], EmbedKind.query)
    assert "api_key=***" in str(err.value) and TOKEN not in exception_text(err.value)
