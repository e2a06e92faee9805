"""The perf generator against wrk on nginx returning a fixed OpenAI-style embedding (issue 25's table),
all in one run on this machine, the same 2 KB request body for every client:

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_perf_vs_wrk.py [--seconds 4]

Rows: wrk -t1 -c16 (the reference); closed loop c=16 and open loop at 500 / 1,000 / 10,000 req/s
offered by: `aiohttp`, the fast generator (lib/perf/aio.py) with a bare body; `engine-aiohttp`, the
same through the openai engine's prepared requests and reply checks (what `sie-bench eval --type perf
-s openai` runs now); `threads`, the thread generator with a bare http.client sender; and
`engine-threads`, the thread generator calling the openai engine per request (what every perf eval
ran before: JSON encoding, reply parsing and validation inside each measured request). Every
generator run is a fresh interpreter. Needs nginx and wrk (scripts/system_deps.sh)."""

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: sie_evals_tests' nginx helpers
from sie_evals_tests.test_perf_vs_wrk import REQUEST_BODY, fixed_nginx, generator, wrk


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    s = args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with fixed_nginx(folder / "nginx") as base:
            url = f"{base}/v1/embeddings"
            print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; body {len(REQUEST_BODY)} bytes")
            ref = wrk(url, folder, seconds=s)
            print("| load | client | offered req/s | achieved req/s | x wrk | p50 ms | p99 ms | late | dropped |")
            print("|---|---|---|---|---|---|---|---|---|")
            print(
                f"| closed c=16 | wrk -t1 -c16 | - | {ref['requests_per_s']:,.0f} | 1.00 | "
                f"{ref['latency_p50_ms']:.2f} | {ref['latency_p99_ms']:.2f} | - | - |"
            )
            for gen in ("aiohttp", "engine-aiohttp", "threads", "engine-threads"):
                closed = generator(
                    url, folder, gen, concurrency=16, requests=None, duration_s=s, warmup_requests=500, trials=1
                )
                print(
                    f"| closed c=16 | {gen} | - | {closed['requests_per_s']:,.0f} | "
                    f"{closed['requests_per_s'] / ref['requests_per_s']:.3f} | {closed['latency_p50_ms']:.2f} | "
                    f"{closed['latency_p99_ms']:.2f} | - | - |"
                )
                for rate in (500.0, 1000.0, 10000.0):
                    m = generator(
                        url,
                        folder,
                        gen,
                        rate=rate,
                        requests=None,
                        duration_s=s,
                        warmup_requests=int(rate // 10),
                        trials=1,
                        max_concurrency=256,
                    )
                    print(
                        f"| open {rate:,.0f}/s | {gen} | {rate:,.0f} | {m['requests_per_s']:,.0f} | - | "
                        f"{m['latency_p50_ms']:.2f} | {m['latency_p99_ms']:.2f} | "
                        f"{m['late']:.0f} | {m['dropped']:.0f} |"
                    )
            print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
