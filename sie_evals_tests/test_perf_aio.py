"""The fast HTTP generator (lib/perf/aio.py) on real loopback servers: split over two generator
processes it sends every request exactly once, on the one shared schedule, and the per-process
HdrHistograms merge into exactly the histogram of all latencies; failures are counted (and their
messages scrubbed), never raised."""

import socket

import numpy as np

from sie_evals.lib.perf import histogram
from sie_evals.lib.perf.aio import HttpTarget, Job, merged_histogram, merged_records, run_parts
from sie_evals.lib.perf.load import LoadSpec, run_load
from sie_evals.lib.perf.openloop import arrival_schedule
from sie_evals_tests import loopback

BODY = b'["text"]'


def _target(port: int) -> HttpTarget:
    return HttpTarget(f"http://127.0.0.1:{port}/", {"Content-Type": "application/json"}, (BODY,), 10.0)


def _same_histogram(a, b) -> bool:
    percentiles = [0, 1, 10, 25, 50, 75, 90, 99, 99.9, 100]
    return (
        a.get_total_count() == b.get_total_count()
        and a.get_min_value() == b.get_min_value()
        and a.get_max_value() == b.get_max_value()
        and [a.get_value_at_percentile(p) for p in percentiles] == [b.get_value_at_percentile(p) for p in percentiles]
    )


def test_two_processes_closed_loop_send_each_request_once_and_merge_exactly():
    with loopback.delay_server(0.0) as port:
        job = Job(_target(port), "closed", clients=4, warm=10, requests=300, duration_s=None)
        parts = run_parts(job, processes=2)
    assert len(parts) == 2 and all(len(p.rec.index) > 0 for p in parts)  # both processes sent
    rec = merged_records(parts)
    assert rec.n_failed == 0 and np.array_equal(rec.index, np.arange(10, 310))  # each counted request once
    whole = histogram.histogram_of((rec.ended - rec.scheduled) * 1000.0)
    assert _same_histogram(merged_histogram(parts), whole)
    assert merged_histogram(parts).get_total_count() == 300


def test_two_processes_open_loop_keep_the_one_schedule():
    rate, n, warm = 200.0, 200, 20
    with loopback.delay_server(0.0) as port:
        spec = LoadSpec(rate=rate, arrival="poisson", requests=n, warmup_requests=warm, trials=1, seed=5, processes=2)
        trial = run_load(None, ["text"], [1], spec, target=_target(port)).trials[0]
    assert trial.scheduled == n and len(trial.latencies_ms) == n and trial.errors == 0 and trial.dropped == 0
    # the counted sends follow the seeded schedule (offsets from the first counted send)
    assert np.allclose(trial.scheduled_at_s, arrival_schedule(rate, "poisson", requests=n, seed=5))
    assert _same_histogram(trial.histogram(), histogram.histogram_of(trial.latencies_ms))


def test_failures_are_counted_and_scrubbed_not_raised():
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = LoadSpec(concurrency=2, requests=20, warmup_requests=0, trials=1)
    result = run_load(None, ["text"], [1], spec, target=_target(port), redact=lambda t: t.replace(str(port), "***"))
    trial = result.trials[0]
    assert trial.errors == 20 and len(trial.latencies_ms) == 0
    assert trial.error_messages and all(str(port) not in m and "***" in m for m in trial.error_messages)
