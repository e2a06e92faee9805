"""The generator's own overhead, measured on this machine and shown in every perf report.

Method: the same load (same generator, concurrency or rate and arrivals, same request bodies, a
shorter trial) against a null endpoint: a loopback HTTP server in its own process that answers
every request at once with the server's own reply (a raw asyncio protocol on uvloop, requests parsed
by httptools: no framework between the socket and the fixed bytes, a few us a request). What the
generator reports there is what it adds by itself: sending, receiving, scheduling, timing, plus the
kernel's loopback. For engines driven in-process (the thread generator calling an engine), the null
endpoint is a `send` that returns at once. When that overhead is more than OVERHEAD_WARN_FRACTION of
a measured p50 or p99, the report warns: the number measures the generator as much as the server."""

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from sie_evals.lib.core.errors import EngineError

OVERHEAD_WARN_FRACTION = 0.25
CALIBRATION_REQUESTS = 2000  # at most, per calibration (closed loop or a set request count)
CALIBRATION_S = 2.0  # at most, for a trial of a set duration

SERVER = r"""
import asyncio, sys
import httptools

REPLY = sys.stdin.buffer.read()
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(REPLY)
ANSWER = HEAD + REPLY

class Null(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.parser = transport, httptools.HttpRequestParser(self)

    def on_message_complete(self):
        self.transport.write(ANSWER)
        if not self.parser.should_keep_alive():
            self.transport.close()

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

async def main():
    server = await asyncio.get_running_loop().create_server(Null, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


@contextmanager
def null_endpoint(reply: bytes = b"{}") -> Iterator[str]:
    """A null endpoint on 127.0.0.1 answering every request with `reply`; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(reply)
        proc.stdin.close()
        line = proc.stdout.readline()
        if not line.strip():
            raise EngineError("perf: the overhead calibration's null endpoint did not start")
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        proc.kill()
        proc.wait()


def calibration_spec(spec: Any) -> Any:
    """The load of the calibration: the same shape, one shorter trial."""
    if spec.requests is not None:
        return replace(spec, trials=1, requests=min(spec.requests, CALIBRATION_REQUESTS))
    return replace(spec, trials=1, duration_s=min(spec.duration_s, CALIBRATION_S))


def overhead_summary(metrics: dict[str, float], method: str) -> dict[str, Any]:
    """What the calibration run measured, for the report and the run conditions."""
    keys = {
        "p50_ms": "latency_p50_ms",
        "p99_ms": "latency_p99_ms",
        "requests_per_s": "requests_per_s",
        "send_lag_p99_ms": "send_lag_p99_ms",
    }
    out: dict[str, Any] = {k: round(float(metrics[v]), 4) for k, v in keys.items() if v in metrics}
    out["method"] = method
    out["warn_fraction"] = OVERHEAD_WARN_FRACTION
    return out


def overhead_warnings(overhead: dict[str, Any], metrics: dict[str, float], where: str = "") -> list[str]:
    """A warning for each of p50, p99 where the generator's own overhead is more than
    OVERHEAD_WARN_FRACTION of what was measured."""
    out = []
    for name in ("p50", "p99"):
        own, measured = overhead.get(f"{name}_ms"), metrics.get(f"latency_{name}_ms")
        if own is None or measured is None or measured <= 0:
            continue
        if own > OVERHEAD_WARN_FRACTION * measured:
            out.append(
                f"generator overhead{where}: {own:.3f} ms at {name} against a null endpoint is "
                f"{own / measured:.0%} of the measured {name} {measured:.3f} ms (more than "
                f"{OVERHEAD_WARN_FRACTION:.0%}): this {name} measures the load generator as much as the server"
            )
    return out
