"""The perf generator against wrk on nginx returning a fixed OpenAI-style embedding (issue 25's table),
all in one run on this machine, the same 2 KB request body for every client:

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_perf_vs_wrk.py [--seconds 4]

Rows: wrk -t1 -c16 (the reference); closed loop c=16 and open loop at 500 / 1,000 / 10,000 req/s
offered by: `engine`, the openai engine's prepared requests and sampled reply checks on the HTTP
generator's fast path (uvloop + httptools: what `sie-bench eval --type perf -s openai` runs now);
`fast`, the same client with a bare body; `engine-aiohttp`, the engine on the generator's aiohttp
client (what the CLI ran before the fast path); `engine-threads`, the thread generator calling the
openai engine per request (what every perf eval ran before that). Then `null endpoint`: the fast
client at each load against the overhead calibration's loopback null endpoint (lib/perf/overhead.py,
the same reply bytes), i.e. the generator's own latency on this machine: where a row's p99 is not
far above it, the generator and the machine, not nginx, set that p99. Every generator run is a fresh
interpreter. Needs nginx and wrk (scripts/system_deps.sh)."""

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: sie_evals_tests' nginx helpers
from sie_evals.lib.perf.overhead import null_endpoint
from sie_evals_tests.test_perf_vs_wrk import REQUEST_BODY, fixed_nginx, generator, reply_json, wrk

RATES = (500.0, 1000.0, 10000.0)


def rows(url: str, folder: Path, gen: str, label: str, seconds: float, ref_rps: float) -> None:
    closed = generator(
        url, folder, gen, concurrency=16, requests=None, duration_s=seconds, warmup_requests=500, trials=1
    )
    print(
        f"| closed c=16 | {label} | - | {closed['requests_per_s']:,.0f} | {closed['requests_per_s'] / ref_rps:.3f} | "
        f"{closed['latency_p50_ms']:.2f} | {closed['latency_p99_ms']:.2f} | - | - |",
        flush=True,
    )
    for rate in RATES:
        m = generator(
            url,
            folder,
            gen,
            rate=rate,
            requests=None,
            duration_s=seconds,
            warmup_requests=int(rate // 10),
            trials=1,
            max_concurrency=256,
        )
        print(
            f"| open {rate:,.0f}/s | {label} | {rate:,.0f} | {m['requests_per_s']:,.0f} | - | "
            f"{m['latency_p50_ms']:.2f} | {m['latency_p99_ms']:.2f} | {m['late']:.0f} | {m['dropped']:.0f} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    s = args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; body {len(REQUEST_BODY)} bytes")
        with fixed_nginx(folder / "nginx") as base:
            url = f"{base}/v1/embeddings"
            ref = wrk(url, folder, seconds=s)
            print("| load | client | offered req/s | achieved req/s | x wrk | p50 ms | p99 ms | late | dropped |")
            print("|---|---|---|---|---|---|---|---|---|")
            print(
                f"| closed c=16 | wrk -t1 -c16 | - | {ref['requests_per_s']:,.0f} | 1.00 | "
                f"{ref['latency_p50_ms']:.2f} | {ref['latency_p99_ms']:.2f} | - | - |",
                flush=True,
            )
            for gen in ("engine", "fast", "engine-aiohttp", "engine-threads"):
                rows(url, folder, gen, gen, s, ref["requests_per_s"])
        with null_endpoint(reply_json().encode()) as base:  # nginx stopped: the generator's own latency
            rows(f"{base}/v1/embeddings", folder, "fast", "fast, null endpoint", s, ref["requests_per_s"])
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
