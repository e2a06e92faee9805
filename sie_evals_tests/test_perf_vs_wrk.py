"""The perf generator against `wrk` on a server faster than any embedding server: nginx on 127.0.0.1
returning a fixed OpenAI-style embedding for POST /v1/embeddings (Debian's nginx-light and wrk, from
scripts/system_deps.sh). Both send the same 2 KB JSON body; wrk -t1 -c16 is the reference.

The bounds are issue 25's where a loaded CI machine can meet them (closed loop >= 0.20x wrk, 95% of
10,000 req/s achieved) and looser where only a quiet one can (p99); they fail the generator's aiohttp
client (0.15x wrk on a quiet machine) and the thread generator before it (0.026x in issue 25);
benchmarks/bench_perf_vs_wrk.py measures the real ratios (benchmarks/RESULTS.md).

The generator runs as `sie-bench eval --type perf -s openai` runs it: the openai engine's prepared
requests on the generator's fast path, its reply checks after each trial; each run is a fresh
interpreter.
nginx and wrk are processes the test starts and stops; nginx's config, pid and logs live in the
test's temp folder."""

import json
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sie_evals_tests.conftest import skip_unless_required

DIMS = 384  # all-MiniLM-L6-v2's width: the openai engine accepts the reply for the default model
# A 2 KB request body, as the openai engine encodes one (real prose, repeated to the size).
TEXT = (
    "Alterations of the architecture of cerebral white matter in the developing human brain can affect "
    "cortical development and result in functional disabilities. "
)
REQUEST_BODY = json.dumps(
    {"model": "m", "input": [(TEXT * 20)[:1990]], "encoding_format": "float"}, separators=(",", ":")
).encode()


def reply_json() -> str:
    rng = random.Random(0)
    vector = [round(rng.uniform(-0.1, 0.1), 6) for _ in range(DIMS)]
    data = [{"object": "embedding", "index": 0, "embedding": vector}]
    usage = {"prompt_tokens": 8, "total_tokens": 8}
    return json.dumps({"object": "list", "data": data, "model": "m", "usage": usage}, separators=(",", ":"))


def tool(name: str) -> str:
    """The path of nginx or wrk; a missing one skips locally and fails in CI."""
    found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if not found:
        skip_unless_required(f"{name} is not installed (scripts/system_deps.sh installs it)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fixed_nginx(folder: Path) -> Iterator[str]:
    """nginx (one worker) answering POST /v1/embeddings with a fixed embedding; yields its base URL."""
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    temps = " ".join(
        f"{name}_temp_path {folder / name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (folder / "nginx.conf").write_text(
        f"""worker_processes 1;
daemon off;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"};
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_buffer_size 64k;
  {temps}
  server {{
    listen 127.0.0.1:{port};
    location = /v1/embeddings {{ default_type application/json; return 200 '{reply_json()}'; }}
  }}
}}
"""
    )
    proc = subprocess.Popen(
        [tool("nginx"), "-e", str(folder / "error.log"), "-p", str(folder), "-c", str(folder / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"nginx did not start on port {port}: {err}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wrk(url: str, folder: Path, seconds: float = 3.0, connections: int = 16) -> dict[str, float]:
    """wrk -t1 -cN POSTing REQUEST_BODY: requests/s and its p50/p99 (ms)."""
    (folder / "body.json").write_bytes(REQUEST_BODY)
    script = folder / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{folder / "body.json"}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    out = subprocess.run(
        [tool("wrk"), "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    unit = {"us": 1e-3, "ms": 1.0, "s": 1000.0}

    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * unit[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rps, out
    return {"requests_per_s": float(rps.group(1)), "latency_p50_ms": latency("50"), "latency_p99_ms": latency("99")}


PROBE = r"""
import dataclasses, http.client, json, sys, threading
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

# *aiohttp: the generator's aiohttp client even for plain http:// (its client before the fast path)
client = "aiohttp" if gen.endswith("aiohttp") else ""
target = None
if gen in ("fast", "aiohttp"):
    target = HttpTarget(url, {"Content-Type": "application/json"}, (body,), client=client)
texts = ["x"]
if gen.startswith("engine"):  # what `sie-bench eval --type perf -s openai` runs, through the openai engine
    from sie_evals.lib.config.model_config import find_model_config
    from sie_evals.lib.engines.base import EmbedKind
    from sie_evals.lib.engines.registry import create_engine
    from sie_evals.lib.harness.evaluation import perf_target, send_timed

    model = find_model_config("sentence-transformers/all-MiniLM-L6-v2")
    engine = create_engine("openai", model, model.resolve_profile(), openai_url=url.removesuffix("/v1/embeddings"))
    engine.start()
    texts = json.loads(body)["input"]
    send = lambda batch: send_timed(engine, batch, EmbedKind.query)  # noqa: E731
    target, check, redact = (None, None, None) if gen == "engine-threads" else perf_target(
        engine, texts, spec.batch_size, EmbedKind.query)
    target = target and dataclasses.replace(target, client=client)
    print(json.dumps(run_load(send, texts, [1], spec, target=target, check=check, redact=redact).metrics()))
else:
    print(json.dumps(run_load(send, texts, [1], spec, target=target).metrics()))
"""


def generator(url: str, folder: Path, gen: str = "engine", **spec) -> dict[str, float]:
    """One generator run (a fresh interpreter) against url with REQUEST_BODY: its metrics. `gen`:
    engine (the openai engine's prepared requests on the HTTP generator's fast path: what the CLI
    runs), engine-aiohttp (the same on its aiohttp client: what the CLI ran before the fast path),
    engine-threads (the openai engine called per request on threads: what it ran before that), and
    fast, aiohttp or threads (a bare body)."""
    (folder / "body.json").write_bytes(REQUEST_BODY)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, url, json.dumps(spec), str(folder / "body.json"), gen],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.slow
def test_generator_keeps_up_with_nginx_like_wrk(tmp_path):
    """What `sie-bench eval --type perf -s openai` runs (`engine`: the openai engine's requests on the
    generator's fast path), in the same attempt as wrk, as the old path (engine-threads: the openai
    engine called per request on threads) and as the generator alone (the same client against the
    overhead calibration's null endpoint):
    - closed loop c=16: >= 0.20x wrk -t1 -c16 (issue 25) and >= 3x the old path (measured 0.80-0.92x
      wrk and ~9x the old path at load average 11 on 2 cores; aiohttp, the client before the fast
      path, 0.15x on a quiet machine);
    - open loop at 1,000 req/s: p50 <= 2 ms (no send is systematically late), nothing dropped, and p99
      <= 5 ms or at most twice the generator's own p99 at that rate on this machine (issue 25 asks
      2 ms, met on a quiet machine: benchmarks/RESULTS.md; at load average 5-7 on 2 vCPUs it read
      5.4-8.6 ms here, with the generator alone at the same level);
    - open loop at 10,000 req/s offered: >= 95% achieved, every request whose time came counted, and
      p99 <= 5 ms or at most twice the generator's own p99 at that rate (what the report gives as the
      reason).
    Best of 3 attempts: CI machines are shared."""
    from sie_evals.lib.perf.overhead import null_endpoint

    attempts = []
    open_spec = {"requests": None, "duration_s": 3.0, "trials": 1, "max_concurrency": 256}
    for _ in range(3):
        with fixed_nginx(tmp_path / "nginx") as base:
            url = f"{base}/v1/embeddings"
            closed_spec = {"concurrency": 16, "requests": None, "duration_s": 3.0, "warmup_requests": 500, "trials": 1}
            ref = wrk(url, tmp_path)
            closed = generator(url, tmp_path, **closed_spec)
            old = generator(url, tmp_path, "engine-threads", **closed_spec)
            open_1k = generator(url, tmp_path, rate=1000.0, warmup_requests=200, **open_spec)
            open_10k = generator(url, tmp_path, rate=10000.0, warmup_requests=1000, **open_spec)
        with null_endpoint(reply_json().encode()) as base:
            own_1k = generator(f"{base}/v1/embeddings", tmp_path, "fast", rate=1000.0, warmup_requests=200, **open_spec)
            own_10k = generator(
                f"{base}/v1/embeddings", tmp_path, "fast", rate=10000.0, warmup_requests=1000, **open_spec
            )
        got = {
            "wrk_rps": ref["requests_per_s"],
            "closed_ratio": closed["requests_per_s"] / ref["requests_per_s"],
            "closed_vs_old": closed["requests_per_s"] / old["requests_per_s"],
            "open_1k_p50_ms": open_1k["latency_p50_ms"],
            "open_1k_p99_ms": open_1k["latency_p99_ms"],
            "own_1k_p99_ms": own_1k["latency_p99_ms"],
            "open_1k_dropped": open_1k["dropped"],
            "open_10k_achieved": open_10k["requests_per_s"] / 10000.0,
            "open_10k_p99_ms": open_10k["latency_p99_ms"],
            "own_10k_p99_ms": own_10k["latency_p99_ms"],
            "open_10k_counted": open_10k["completed"] + open_10k["errors"] + open_10k["dropped"],
            "open_10k_scheduled": open_10k["scheduled"],
        }
        attempts.append(got)
        assert got["open_10k_counted"] == got["open_10k_scheduled"], got
        assert closed["errors"] == 0 == open_1k["errors"] == open_10k["errors"], got
        if (
            got["closed_ratio"] >= 0.20
            and got["closed_vs_old"] >= 3.0
            and got["open_1k_p50_ms"] <= 2.0
            and got["open_1k_p99_ms"] <= max(5.0, 2.0 * got["own_1k_p99_ms"])
            and got["open_1k_dropped"] == 0
            and got["open_10k_achieved"] >= 0.95
            and got["open_10k_p99_ms"] <= max(5.0, 2.0 * got["own_10k_p99_ms"])
        ):
            break
    else:
        pytest.fail(f"the generator did not keep up with nginx: {attempts}")


def test_nginx_serves_an_openai_reply_the_engine_accepts(tmp_path):
    """The fixed reply is a valid OpenAI embeddings reply for the default model (384 dimensions)."""
    from sie_evals.lib.engines.openai import parse_openai_embeddings

    tool("nginx")
    with fixed_nginx(tmp_path / "nginx") as base:
        import urllib.request

        req = urllib.request.Request(f"{base}/v1/embeddings", data=REQUEST_BODY, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            vectors = parse_openai_embeddings("openai", json.loads(resp.read()))
    assert len(vectors) == 1 and len(vectors[0]) == DIMS
    assert 1900 <= len(REQUEST_BODY) <= 2100  # the 2 KB body of the comparison
