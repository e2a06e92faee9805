"""Ground truth for the perf generator: a loopback HTTP server, in its own process (no GIL shared with
the generator), that holds every request for a fixed delay and reports how long it really held it;
and the lightest client for it (one persistent http.client connection per thread).

The client returns the server's own time as {"total_ms": ...}, the shape run_load records beside the
client latency (as it does for SIE's `timing`). Used by the perf tests and benchmarks/.

Two servers: delay_server holds every request independently (infinitely many servers: latency is the
delay whatever the load); queue_server is ONE worker with a fixed service time, serving requests in
arrival order (a D/1 FIFO queue, M/D/1 under Poisson arrivals), optionally stalling once."""

import http.client
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SERVER_SCRIPT = r"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELAY_S = float(sys.argv[1])

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no delayed-ACK stalls between header and body writes

    def do_POST(self):
        start = time.perf_counter()
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if DELAY_S > 0:
            time.sleep(DELAY_S)
        handled_ms = (time.perf_counter() - start) * 1000
        payload = json.dumps({"n": len(json.loads(body)), "handled_ms": handled_ms}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass

ThreadingHTTPServer.request_queue_size = 128  # the default backlog (5) resets 16 simultaneous connects
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


QUEUE_SERVER_SCRIPT = r"""
import asyncio, json, sys, time

SERVICE_S, STALL_AT, STALL_S = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
state = {"free_at": 0.0, "n": 0}

def admit():
    # One worker, FIFO: service starts when the worker is free. The worker's timeline is kept on the
    # clock (departure = max(arrival, previous departure) + service), so one late wake-up of this
    # process delays one reply, never the ones queued behind it.
    arrival = time.monotonic()
    state["n"] += 1
    start = max(arrival, state["free_at"])
    service = SERVICE_S + (STALL_S if state["n"] == STALL_AT else 0.0)
    state["free_at"] = start + service
    return arrival, start, state["free_at"]

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            arrival, start, done = admit()
            await asyncio.sleep(max(0.0, done - time.monotonic()))
            now = time.monotonic()
            payload = json.dumps({"n": len(json.loads(body)), "handled_ms": (now - arrival) * 1000,
                                  "queue_ms": (start - arrival) * 1000}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


@contextmanager
def _serve(script: str, *args: str) -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def queue_server(service_s: float, stall_at: int = 0, stall_s: float = 0.0) -> Iterator[int]:
    """One worker, fixed service time, FIFO; the stall_at-th request received (1-based; 0 = never)
    takes stall_s longer. Yields the port; kills the server on exit."""
    with _serve(QUEUE_SERVER_SCRIPT, str(service_s), str(stall_at), str(stall_s)) as port:
        yield port


@contextmanager
def delay_server(delay_s: float) -> Iterator[int]:
    """Start the server on a free loopback port; yields the port; kills it on exit."""
    with _serve(SERVER_SCRIPT, str(delay_s)) as port:
        yield port


def http_sender(port: int, timeout_s: float = 10.0) -> Callable[[list[str]], dict[str, float]]:
    """A `send` for run_load: POSTs the batch, checks the reply, returns the server's own time."""
    local = threading.local()

    def send(batch: list[str]) -> dict[str, float]:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        local.conn.request("POST", "/", body=json.dumps(batch), headers={"Content-Type": "application/json"})
        reply = local.conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise ValueError(f"loopback server replied HTTP {reply.status}")
        data = json.loads(body)
        if data["n"] != len(batch):
            raise ValueError(f"loopback server counted {data['n']} items, sent {len(batch)}")
        return {"total_ms": float(data["handled_ms"])}

    return send
