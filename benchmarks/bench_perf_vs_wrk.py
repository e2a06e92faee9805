"""The perf generator against wrk on nginx returning a fixed OpenAI-style embedding (issue 25's table),
all in one run on this machine, the same 2 KB request body for every client:

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_perf_vs_wrk.py [--seconds 4]

Rows: wrk -t1 -c16 (the reference); the fast generator (lib/perf/aio.py, what HTTP engines use) closed
loop c=16 and open loop at 500 / 1,000 / 10,000 req/s offered; the thread generator (what engines
without an HTTP target use, and what every engine used before) for the same loads. Every generator run
is a fresh interpreter. Needs nginx and wrk (scripts/system_deps.sh)."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: sie_evals_tests' nginx helpers
from sie_evals_tests.test_perf_vs_wrk import REQUEST_BODY, fixed_nginx, wrk

PROBE = r"""
import http.client, json, sys, threading
from urllib.parse import urlsplit
from sie_evals.lib.perf.aio import HttpTarget
from sie_evals.lib.perf.load import LoadSpec, run_load

url, spec, body, gen = sys.argv[1], LoadSpec(**json.loads(sys.argv[2])), open(sys.argv[3], "rb").read(), sys.argv[4]
parts, local = urlsplit(url), threading.local()

def send(batch):  # the thread generator's client: one keep-alive http.client connection per thread
    if not hasattr(local, "conn"):
        local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    local.conn.request("POST", parts.path, body=body, headers={"Content-Type": "application/json"})
    reply = local.conn.getresponse()
    reply.read()
    if reply.status != 200:
        raise ValueError(f"HTTP {reply.status}")

target = HttpTarget(url, {"Content-Type": "application/json"}, (body,)) if gen == "aiohttp" else None
print(json.dumps(run_load(send, ["x"], [1], spec, target=target).metrics()))
"""


def run(url: str, folder: Path, gen: str, **spec) -> dict[str, float]:
    (folder / "body.json").write_bytes(REQUEST_BODY)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, url, json.dumps(spec), str(folder / "body.json"), gen],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout)


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
            for gen in ("aiohttp", "threads"):
                closed = run(
                    url, folder, gen, concurrency=16, requests=None, duration_s=s, warmup_requests=500, trials=1
                )
                print(
                    f"| closed c=16 | {gen} | - | {closed['requests_per_s']:,.0f} | "
                    f"{closed['requests_per_s'] / ref['requests_per_s']:.3f} | {closed['latency_p50_ms']:.2f} | "
                    f"{closed['latency_p99_ms']:.2f} | - | - |"
                )
                for rate in (500.0, 1000.0, 10000.0):
                    m = run(
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
