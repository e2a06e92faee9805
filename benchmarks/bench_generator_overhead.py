"""Overhead of the perf load generator itself against a trivial loopback server: closed loop at
concurrency 16, and open loop at 200 requests/s.

    .venv/bin/python benchmarks/bench_generator_overhead.py [--requests-per-client 200] [--open-rate 200]

The server (its own process) answers at once and reports how long it held each request. The same
16-thread HTTP client runs twice in this process: bare (threads in a loop, one perf_counter pair per
request) as the reference, and driven by sie_evals.lib.perf.load.run_load. The generator's overhead per
request is the difference of the two mean client latencies; the ratio is generator / bare. Goal: the
overhead stays under 2 ms per request.

Open loop: the reference is one bare thread that sleeps until each scheduled time of the same seeded
Poisson schedule and sends (latency from its own send). The generator's latency runs from the
scheduled send time, so its overhead (p50 of generator latency - p50 of bare latency) includes the
dispatcher's wake-up, the hand-over to a worker thread and the bookkeeping. Goal: <= 1 ms at p50.
"""

import argparse
import statistics
import threading
import time

import numpy as np

from sie_evals.lib.perf.load import LoadSpec, run_load
from sie_evals.lib.perf.openloop import arrival_schedule
from sie_evals_tests import loopback

CONCURRENCY = 16


def bare(send, per_client: int) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(per_client):
            t0 = time.perf_counter()
            send(["x"])
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                latencies.append(dt)

    threads = [threading.Thread(target=client) for _ in range(CONCURRENCY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def bare_paced(send, offsets: np.ndarray) -> list[float]:
    """Send at each offset from one thread; latency from the actual send (no schedule bookkeeping)."""
    latencies = []
    start = time.perf_counter() + 0.05
    for off in offsets:
        d = start + off - time.perf_counter()
        if d > 0:
            time.sleep(d)
        t0 = time.perf_counter()
        send(["x"])
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


def open_loop_rounds(send, rate: float, seconds: float, rounds: int) -> None:
    spec = LoadSpec(rate=rate, arrival="poisson", requests=None, duration_s=seconds, warmup_requests=20, trials=1)
    offsets = arrival_schedule(rate, "poisson", duration_s=seconds, seed=spec.seed)
    for r in range(rounds):
        ref = float(np.percentile(bare_paced(send, offsets), 50))
        trial = run_load(send, ["x"], [1], spec).trials[0]
        gen = float(np.percentile(trial.latencies_ms, 50))
        lag = float(np.percentile(trial.send_lag_ms, 50))
        print(
            f"open loop {rate:g} req/s, round {r + 1}: bare paced client p50 {ref:.3f} ms, generator p50 "
            f"(from scheduled send) {gen:.3f} ms, send lag p50 {lag:.3f} ms, overhead {gen - ref:+.3f} ms, "
            f"ratio {gen / ref:.3f}, late {trial.late}, dropped {trial.dropped} (goal: overhead <= 1 ms at p50)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests-per-client", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--open-rate", type=float, default=200.0)
    parser.add_argument("--open-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with loopback.delay_server(0.0) as port:  # a trivial server: answers at once
        send = loopback.http_sender(port)
        bare(send, 10)  # warm the connections
        spec = LoadSpec(
            batch_size=1,
            concurrency=CONCURRENCY,
            requests=CONCURRENCY * args.requests_per_client,
            warmup_requests=CONCURRENCY,
            trials=1,
        )
        for r in range(args.rounds):
            ref = statistics.mean(bare(send, args.requests_per_client))
            gen = float(run_load(send, ["x"], [1], spec).trials[0].latencies_ms.mean())
            print(
                f"round {r + 1}: bare client {ref:.3f} ms/request, with generator {gen:.3f} ms/request, "
                f"overhead {gen - ref:+.3f} ms, ratio {gen / ref:.3f} (goal: overhead <= 2 ms)"
            )
        open_loop_rounds(send, args.open_rate, args.open_seconds, args.rounds)


if __name__ == "__main__":
    main()
