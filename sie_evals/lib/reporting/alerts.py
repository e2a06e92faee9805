"""Alerts for failed asset checks and failed runs: the message, where it goes, and the bookkeeping
that makes each failed check evaluation alert exactly once.

Destinations are configured only through the environment (secrets are never written anywhere):
- SIE_EVALS_ALERT_WEBHOOK_URL: a generic webhook; receives JSON {"text": ..., "alert": {...}}
  (the "text" field is also what a Slack incoming webhook expects). It must be an http(s)://host URL:
  anything else is a ConfigError when the sinks are built, not at the first delivery. Its path and
  query may be the secret (Slack's are), so messages show its scheme://host only.
- SIE_EVALS_SLACK_TOKEN (or SLACK_BOT_TOKEN) and SIE_EVALS_SLACK_CHANNEL: Slack through dagster-slack.
- SIE_EVALS_DAGSTER_URL: base URL of the Dagster UI for run and check links (default http://127.0.0.1:3000).
A failed check's alert links to the check in the UI (its metadata holds the regressed-queries table) and
names the queries that regressed most.
"""

import base64
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from sie_evals.lib.core.errors import ConfigError
from sie_evals.lib.core.urls import (
    http_url_problem,
    redact_url,
    redact_webhook_text,
    split_credentials,
    webhook_origin,
)

WEBHOOK_ENV = "SIE_EVALS_ALERT_WEBHOOK_URL"
SLACK_TOKEN_ENVS = ("SIE_EVALS_SLACK_TOKEN", "SLACK_BOT_TOKEN")
SLACK_CHANNEL_ENV = "SIE_EVALS_SLACK_CHANNEL"
DAGSTER_URL_ENV = "SIE_EVALS_DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
ALERT_QUERIES = 3  # regressed queries an alert names (the check's metadata lists more)


@dataclass(frozen=True)
class FailedMetric:
    metric: str
    value: float | None
    target: float | None
    ratio: float | None = None
    margin: float | None = None


@dataclass(frozen=True)
class Alert:
    kind: str  # "check" or "run"
    title: str  # check name or job name
    severity: str  # ERROR / WARN for checks, FAILURE for runs
    run_id: str
    run_url: str
    model: str | None = None
    task: str | None = None
    source: str | None = None
    partition: str | None = None
    metrics: tuple[FailedMetric, ...] = ()
    description: str | None = None
    dedupe_key: str = ""  # unique per failed evaluation / run
    # what changed in the run conditions since the last passing result (lib/gates/conditions.py)
    diagnosis: str | None = None
    changes: tuple[dict[str, Any], ...] = ()
    check_url: str | None = None  # the check in the Dagster UI, where its metadata explains the failure
    regressed_metric: str | None = None
    regressed_queries: tuple[str, ...] = ()  # ids of the queries that regressed most, worst first

    def text(self) -> str:
        where = f"{self.model} · {self.task} · {self.source}" if self.model else (self.partition or "-")
        head = f"[{self.severity}] {self.title} failed: {where}"
        lines = [head]
        for m in self.metrics:
            lines.append(
                f"  {m.metric}: value {_num(m.value)} vs target {_num(m.target)}"
                + (f" (ratio {m.ratio:.4f}, margin {m.margin:g})" if m.ratio is not None and m.margin else "")
            )
        if self.diagnosis:
            lines.append(f"  why: {self.diagnosis}")
        elif self.description and not self.metrics:
            lines.append(f"  {self.description}")
        if self.regressed_queries:
            lines.append(f"  most regressed queries ({self.regressed_metric}): {', '.join(self.regressed_queries)}")
        if self.check_url:
            lines.append(f"  check: {self.check_url}")
        lines.append(f"  run: {self.run_url}")
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        return {"text": self.text(), "alert": asdict(self)}


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.5g}"


def _ui_base() -> str:
    return redact_url(os.environ.get(DAGSTER_URL_ENV, DEFAULT_DAGSTER_URL).rstrip("/"))


def run_url(run_id: str) -> str:
    return f"{_ui_base()}/runs/{run_id}"


def check_url(asset_path: Sequence[str], check_name: str, partition: str | None = None) -> str:
    """The check's page in the Dagster UI (the asset's Checks tab with the check open, as the UI's own
    links are); the partition rides along as the asset pages' `partition` parameter."""
    path = "/".join(urllib.parse.quote(part, safe="") for part in asset_path)
    query = {"view": "checks", "checkDetail": check_name, **({"partition": partition} if partition else {})}
    return f"{_ui_base()}/assets/{path}?{urllib.parse.urlencode(query)}"


class AlertSink(Protocol):
    name: str

    def send(self, alert: Alert) -> None: ...


class AlertDeliveryError(RuntimeError):
    pass


@dataclass
class WebhookSink:
    url: str = field(repr=False)  # may carry a token in its path, query or user:password: never printed
    timeout_s: float = 10.0
    attempts: int = 3
    name: str = "webhook"

    def send(self, alert: Alert) -> None:
        try:
            self._send(alert)
        except AlertDeliveryError:
            raise
        except (ValueError, http.client.HTTPException, OSError) as exc:  # a malformed URL, a broken reply
            raise AlertDeliveryError(self._failure(f"{type(exc).__name__}: {exc}")) from None

    def _failure(self, detail: str) -> str:
        return f"alert webhook at {webhook_origin(self.url)} failed: {redact_webhook_text(detail, self.url)}"

    def _send(self, alert: Alert) -> None:
        body = json.dumps(alert.payload()).encode()
        # urllib does not understand user:password@ in a URL: send it as Basic auth, as curl does
        url, credentials = split_credentials(self.url)
        headers = {"Content-Type": "application/json"}
        if credentials:
            token = base64.b64encode(":".join(credentials).encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        last: Exception | None = None
        for attempt in range(self.attempts):
            request = urllib.request.Request(url, data=body, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                    if 200 <= reply.status < 300:
                        return
                    last = AlertDeliveryError(f"webhook replied HTTP {reply.status}")
            except urllib.error.HTTPError as exc:
                last = exc
                if exc.code < 500:  # a client error will not go away by retrying
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = exc
            if attempt + 1 < self.attempts:
                time.sleep(0.5 * 2**attempt)
        raise AlertDeliveryError(self._failure(str(last)))


@dataclass
class SlackSink:
    token: str = field(repr=False)
    channel: str
    name: str = "slack"

    def send(self, alert: Alert) -> None:
        from dagster_slack import SlackResource

        try:
            SlackResource(token=self.token).get_client().chat_postMessage(channel=self.channel, text=alert.text())
        except Exception as exc:  # slack_sdk raises its own error types
            raise AlertDeliveryError(f"Slack post to {self.channel} failed: {type(exc).__name__}") from None


def webhook_sink(url: str, what: str = f"${WEBHOOK_ENV}") -> WebhookSink:
    """A webhook sink for a URL that is one; a ConfigError otherwise, which says what is wrong without
    quoting the URL (its path may be the token)."""
    if problem := http_url_problem(url):
        raise ConfigError(
            f"{what} is not an http(s)://host URL: {problem} (the value is not shown: it may hold a token)"
        )
    return WebhookSink(url.strip())


def sinks_from_env(environ: Mapping[str, str] | None = None) -> list[AlertSink]:
    """The destinations configured in the environment; a malformed one is a ConfigError here, at
    configuration time, rather than a delivery failure later."""
    env = os.environ if environ is None else environ
    sinks: list[AlertSink] = []
    if env.get(WEBHOOK_ENV, "").strip():
        sinks.append(webhook_sink(env[WEBHOOK_ENV]))
    token = next((env[k] for k in SLACK_TOKEN_ENVS if env.get(k)), None)
    if token and env.get(SLACK_CHANNEL_ENV):
        sinks.append(SlackSink(token, env[SLACK_CHANNEL_ENV]))
    return sinks


def deliver(alert: Alert, sinks: Iterable[AlertSink]) -> None:
    """Send to every sink (one that is down does not silence the others); raise if any failed."""
    errors = []
    for sink in sinks:
        try:
            sink.send(alert)
        except AlertDeliveryError as exc:
            errors.append(str(exc))
    if errors:
        raise AlertDeliveryError("; ".join(errors))


# --- exactly once per failed check evaluation -------------------------------------------------
# Dagster creates a check's execution record (with its id) when the check is *planned*, at run start,
# and fills in the result later. A plain "largest id seen" cursor would skip a record that was still
# planned at one tick and failed by the next. So the cursor keeps a low-water mark below which every
# record is settled, plus the settled ids above it.


@dataclass(frozen=True)
class CheckRecord:
    id: int
    settled: bool  # evaluated (passed or failed), or planned in a run that ended without evaluating it
    failed: bool


@dataclass
class CheckCursor:
    low: int = 0  # every record with id <= low has been handled
    seen: set[int] = field(default_factory=set)  # handled ids above `low`

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low, "seen": sorted(self.seen)}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "CheckCursor":
        if not data:
            return cls()
        return cls(int(data["low"]), {int(i) for i in data.get("seen", [])})


def plan_check_alerts(records: Iterable[CheckRecord], cursor: CheckCursor) -> tuple[list[int], CheckCursor]:
    """Which record ids to alert on now (failed, settled, not yet handled), and the next cursor.

    `records` must include every record with id > cursor.low (any order)."""
    records = [r for r in records if r.id > cursor.low]
    fresh = [r for r in records if r.id not in cursor.seen]
    to_alert = sorted(r.id for r in fresh if r.settled and r.failed)
    seen = cursor.seen | {r.id for r in fresh if r.settled}
    pending = [r.id for r in records if not r.settled]
    low = max(cursor.low, min(pending) - 1 if pending else max((r.id for r in records), default=0))
    return to_alert, CheckCursor(low, {i for i in seen if i > low})
