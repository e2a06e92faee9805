"""The closed-loop load generator against ground truth: a loopback HTTP server with a known delay."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from sie_evals.lib.perf import LoadSpec, request_items, run_load

DELAY_S = 0.1


class _DelayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls between header and body writes

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.server.delay)
        payload = json.dumps({"n": len(json.loads(body))}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def delay_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DelayHandler)
    server.daemon_threads = True
    server.delay = DELAY_S
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _sender(url):
    local = threading.local()

    def send(batch):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        r = local.session.post(url, json=batch, timeout=10)
        r.raise_for_status()
        if r.json()["n"] != len(batch):
            raise ValueError("wrong count")

    return send


@pytest.mark.parametrize("concurrency", [1, 16])
def test_percentiles_match_a_known_delay(delay_server, concurrency):
    texts = [f"text {i}" for i in range(50)]
    spec = LoadSpec(batch_size=2, concurrency=concurrency, requests=10 * concurrency, warmup_requests=concurrency,
                    trials=1)
    result = run_load(_sender(delay_server), texts, [3] * len(texts), spec)
    m = result.metrics()
    assert result.errors == 0
    delay_ms = DELAY_S * 1000
    assert m["latency_p50_ms"] == pytest.approx(delay_ms, rel=0.05)
    assert m["latency_p99_ms"] == pytest.approx(delay_ms, rel=0.05)
    # closed loop: about `concurrency` requests complete per delay
    assert m["requests_per_s"] == pytest.approx(concurrency / DELAY_S, rel=0.15)


def test_counts_are_consistent(delay_server):
    texts = [f"t{i}" for i in range(7)]
    spec = LoadSpec(batch_size=3, concurrency=4, requests=20, warmup_requests=4, trials=2)
    result = run_load(_sender(delay_server), texts, list(range(1, 8)), spec)
    for trial in result.trials:
        assert len(trial.latencies_ms) == 20 and trial.items == 20 * 3
        m = trial.metrics()
        assert m["items_per_s"] * trial.duration_s == pytest.approx(trial.items)
        assert trial.tokens == pytest.approx(m["tokens_per_s"] * trial.duration_s)


def test_errors_are_counted_not_raised():
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise ConnectionError("boom")

    result = run_load(flaky, ["a", "b"], [1, 1], LoadSpec(concurrency=1, requests=30, warmup_requests=0, trials=1))
    t = result.trials[0]
    assert t.errors == 10 and len(t.latencies_ms) == 20 and "boom" in t.error_messages[0]


def test_requests_draw_texts_deterministically():
    texts = list("abcde")
    assert request_items(0, texts, 2) == [0, 1]
    assert request_items(2, texts, 2) == [4, 0]
    assert request_items(7, texts, 2) == [4, 0]


def test_duration_mode_stops():
    spec = LoadSpec(concurrency=2, requests=None, duration_s=0.3, warmup_requests=0, trials=1)
    start = time.perf_counter()
    result = run_load(lambda b: time.sleep(0.01), ["x"], [1], spec)
    assert time.perf_counter() - start < 2 and len(result.trials[0].latencies_ms) > 5
