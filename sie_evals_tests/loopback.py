"""Ground truth for the perf generator: a loopback HTTP server, in its own process (no GIL shared with
the generator), that holds every request for a fixed delay and reports how long it really held it;
and the lightest client for it (one persistent http.client connection per thread).

The client returns the server's own time as {"total_ms": ...}, the shape run_load records beside the
client latency (as it does for SIE's `timing`). Used by the perf tests and benchmarks/."""

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


@contextmanager
def delay_server(delay_s: float) -> Iterator[int]:
    """Start the server on a free loopback port; yields the port; kills it on exit."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(delay_s)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


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
