"""Overhead of the perf load generator itself, at concurrency 16, against a trivial loopback server.

    .venv/bin/python benchmarks/bench_generator_overhead.py [--requests-per-client 200]

The server (its own process) answers at once and reports how long it held each request. The same
16-thread HTTP client runs twice in this process: bare (threads in a loop, one perf_counter pair per
request) as the reference, and driven by sie_evals.lib.perf.load.run_load. The generator's overhead per
request is the difference of the two mean client latencies; the ratio is generator / bare. Goal: the
overhead stays under 2 ms per request.
"""

import argparse
import statistics
import threading
import time

from sie_evals.lib.perf.load import LoadSpec, run_load
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests-per-client", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
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


if __name__ == "__main__":
    main()
