"""The generator's fast path (lib/perf/aio.py: uvloop transports, httptools' parser, pre-encoded
requests) against a real loopback server that misbehaves on request: it closes connections, answers
500, answers bytes that are not HTTP, or never answers. Every request is counted (completed or failed,
with its reason), a connection that cannot carry another request is replaced, and the others are
kept alive (the server counts the connections it accepted). And against nginx: what one request costs
the generator in CPU, the number that decides how fast a server it can measure."""

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from sie_evals.lib.perf.aio import HttpTarget, Job, fast_path, request_bytes, run_job
from sie_evals_tests.test_perf_vs_wrk import REQUEST_BODY, fixed_nginx, tool

# Replies by request body; GET /stats answers {"connections": accepted so far}.
SERVER = r"""
import asyncio, json, sys
import httptools

state = {"connections": 0}

def reply(status, body, close=False):
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body

class Server(asyncio.Protocol):
    def connection_made(self, transport):
        state["connections"] += 1
        self.transport, self.parser, self.body, self.url = transport, httptools.HttpRequestParser(self), b"", b""

    def on_url(self, url):
        self.url = url

    def on_body(self, body):
        self.body += body

    def on_message_complete(self):
        body, self.body = self.body, b""
        if self.url == b"/stats":
            self.transport.write(reply("200 OK", json.dumps(state).encode(), close=True))
            self.transport.close()
        elif body == b"ok":
            self.transport.write(reply("200 OK", b'{"ok":1}'))
        elif body == b"close":
            self.transport.write(reply("200 OK", b'{"ok":1}', close=True))
            self.transport.close()
        elif body == b"500":
            self.transport.write(reply("500 Internal Server Error", b"boom"))
        elif body == b"garbage":
            self.transport.write(b"NOT HTTP AT ALL\r\n\r\n")
        # b"hang": no reply

    def data_received(self, data):
        self.parser.feed_data(data)

async def main():
    server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""

CYCLE = (b"ok", b"ok", b"close", b"500", b"garbage", b"ok")  # request i sends CYCLE[i % 6]


@contextmanager
def misbehaving_server() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.kill()
        proc.wait()


def connections(base: str) -> int:
    with urllib.request.urlopen(f"{base}/stats", timeout=10) as resp:
        return json.loads(resp.read())["connections"] - 1  # less this request's own


def _target(base: str, bodies: tuple[bytes, ...], timeout_s: float = 10.0) -> HttpTarget:
    return HttpTarget(f"{base}/v1/embeddings", {"Content-Type": "application/json"}, bodies, timeout_s)


def test_the_fast_path_rule_and_its_requests():
    plain = HttpTarget("http://127.0.0.1:8080/v1/embeddings?x=1", {"Authorization": "Bearer k"}, (b"ab",))
    assert fast_path(plain)
    assert not fast_path(HttpTarget("https://127.0.0.1/v1", {}, (b"",)))  # TLS: aiohttp
    assert not fast_path(HttpTarget("http://u:p@127.0.0.1/v1", {}, (b"",)))  # credentials in the URL: aiohttp
    assert not fast_path(HttpTarget("http://127.0.0.1/v1", {"X": "a\r\nB: c"}, (b"",)))  # never sent raw
    assert request_bytes(plain) == (
        b"POST /v1/embeddings?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer k\r\n"
        b"Content-Length: 2\r\n\r\nab",
    )


def test_closed_loop_counts_every_failure_and_replaces_only_broken_connections():
    n = 60
    with misbehaving_server() as base:
        job = Job(_target(base, CYCLE), "closed", clients=2, warm=0, requests=n, duration_s=None)
        part = run_job(job)
        opened = connections(base)
    rec = part.rec
    good = [i for i in range(n) if CYCLE[i % 6] in (b"ok", b"close")]
    assert rec.index.tolist() == good and rec.n_failed == n - len(good) == 20 and rec.n_scheduled == n
    assert any(e.startswith("HTTP 500: boom") for e in rec.errors), rec.errors
    assert any(e.startswith("malformed HTTP reply") for e in rec.errors), rec.errors
    assert np.all(rec.ended >= rec.sent) and np.array_equal(rec.sent, rec.scheduled)
    # 2 clients' connections, one more after each `close` and each `garbage` (10 each) unless no request
    # was left for it (the last break of each client may come after the last request was taken); the
    # 500s and the oks kept theirs alive
    assert 2 + 10 + 10 - 2 <= opened <= 2 + 10 + 10
    assert all(body == b'{"ok":1}' for _, body in part.samples)


def test_open_loop_counts_every_scheduled_request():
    n = 60
    with misbehaving_server() as base:
        job = Job(_target(base, CYCLE), "open", clients=8, warm=6, requests=n, duration_s=None, rate=400.0, seed=3)
        rec = run_job(job).rec
    good = [i for i in range(6, 6 + n) if CYCLE[i % 6] in (b"ok", b"close")]
    assert rec.n_scheduled == n and rec.n_dropped == 0
    assert rec.index.tolist() == good and rec.n_failed == n - len(good)
    assert np.all(rec.sent >= rec.scheduled - 1e-3)  # never sent before its time


def test_a_request_without_reply_times_out_and_its_connection_is_replaced():
    with misbehaving_server() as base:
        job = Job(_target(base, (b"ok", b"hang"), timeout_s=0.3), "closed", 1, warm=0, requests=4, duration_s=None)
        rec = run_job(job).rec
        opened = connections(base)
    assert rec.index.tolist() == [0, 2] and rec.n_failed == 2
    assert all("TimeoutError: no reply within 0.3 s" in e for e in rec.errors), rec.errors
    assert opened == 2  # the first, and one after the first timeout (nothing was left after the second)


PROBE = r"""
import json, sys, time
from sie_evals.lib.perf.aio import HttpTarget, Job, fast_path, run_job

target = HttpTarget(sys.argv[1], {"Content-Type": "application/json"}, (open(sys.argv[2], "rb").read(),), 10.0)
job = Job(target, "closed", clients=16, warm=1000, requests=20000, duration_s=None)
cpu = time.process_time()
rec = run_job(job).rec
cpu = time.process_time() - cpu
got = {"fast": fast_path(target), "ok": len(rec.index), "failed": rec.n_failed, "cpu_us": cpu / 21000 * 1e6}
print(json.dumps(got))
"""


def test_a_request_costs_the_generator_little_cpu(tmp_path):  # ~3 s
    """Closed loop c=16 against nginx (a fresh interpreter): the generator's CPU time per request,
    which bounds the requests/s one generator core can measure. aiohttp costs ~100-110 us here; the
    fast path measured 8-10 us at load average 4-12 on this 2-vCPU VM. CPU time, not wall time, so a
    busy machine moves it little."""
    tool("wrk")  # with nginx: installed together by scripts/system_deps.sh
    (tmp_path / "body.json").write_bytes(REQUEST_BODY)
    with fixed_nginx(tmp_path / "nginx") as base:
        out = subprocess.run(
            [sys.executable, "-c", PROBE, f"{base}/v1/embeddings", str(tmp_path / "body.json")],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    got = json.loads(out.stdout)
    assert got["fast"] and got["ok"] == 20000 and got["failed"] == 0, got
    assert got["cpu_us"] <= 30.0, got


def test_the_overhead_calibration_uses_the_client_of_the_real_target():
    """The null endpoint is plain http://, yet a target that runs on aiohttp (https here) is calibrated
    on aiohttp: the overhead shown is that of the client the run used."""
    from sie_evals.lib.harness.evaluation import calibrate_overhead
    from sie_evals.lib.perf.load import LoadSpec

    spec = LoadSpec(concurrency=2, requests=40, warmup_requests=0, trials=1)
    for url, client in (("https://127.0.0.1:9/v1/embeddings", "aiohttp"), ("http://127.0.0.1:9/v1/embeddings", "fast")):
        target = HttpTarget(url, {"Content-Type": "application/json"}, (b'{"input":["x"]}',), 10.0)
        got = calibrate_overhead(spec, ["x"], [1], target, b'{"data":[]}')
        assert got["method"] == f"{client} generator, the same requests to a loopback null endpoint", got
        assert got["requests_per_s"] > 0 and got["p50_ms"] > 0, got
    assert not fast_path(HttpTarget("http://127.0.0.1:9/v1", {}, (b"",), client="aiohttp"))


@pytest.mark.timeout(60)
def test_a_closed_loop_of_set_duration_ends_when_nothing_listens():
    """Every connection refused: each request fails at once, and the trial still ends at its deadline
    (which starts at the first counted request, failed or not)."""
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = Job(_target(f"http://127.0.0.1:{port}", (b"ok",)), "closed", clients=2, warm=5, requests=None, duration_s=0.5)
    rec = run_job(job).rec
    assert len(rec.index) == 0 and rec.n_failed == rec.n_scheduled > 0
    assert all(f"cannot connect to 127.0.0.1:{port}" in e for e in rec.errors), rec.errors
