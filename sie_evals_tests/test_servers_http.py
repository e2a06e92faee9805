"""The shared HTTP engine client against a small real loopback HTTP server (bad replies, retries,
threads), and the process lifecycle of `ManagedServer` with real child processes. No server venvs."""

import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from sie_evals.lib.core.errors import EngineError, InputError
from sie_evals.lib.engines import EmbedKind, create_engine
from sie_evals.lib.engines.infinity import InfinityEngine
from sie_evals.lib.engines.sie import SieEngine
from sie_evals.lib.engines.tei import TeiEngine
from sie_evals.lib.servers.managed import ManagedServer, ServerCommand, free_port

DIMS = 8


class Script:
    """What the loopback server answers, request by request (the last entry repeats)."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.calls = 0
        self.lock = threading.Lock()

    def next(self):
        with self.lock:
            step = self.steps[min(self.calls, len(self.steps) - 1)]
            self.calls += 1
            return step


def vector(text: str, dims: int = DIMS) -> list[float]:
    rng = np.random.default_rng(abs(hash(text)) % (2**32))
    v = rng.normal(size=dims)
    return (v / np.linalg.norm(v)).tolist()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, json.dumps({"version": "test", "model_id": "x"}).encode())

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        texts = [i["text"] for i in req["items"]] if "items" in req else req.get("input") or req.get("inputs")
        step = self.server.script.next()
        if step == "ok":
            vecs = [vector(t) for t in texts]
        elif isinstance(step, int):
            return self._send(step, b'{"error": "scripted"}')
        elif step == "sleep":
            time.sleep(2)
            vecs = [vector(t) for t in texts]
        elif step == "nan":
            vecs = [vector(t) for t in texts]
            vecs[-1][0] = float("nan")
        elif step == "wrong_dims":
            vecs = [vector(t, DIMS + 1) for t in texts]
        elif step == "ragged":
            vecs = [vector(t, DIMS + (i % 2)) for i, t in enumerate(texts)]
        elif step == "wrong_count":
            vecs = [vector(t) for t in texts][:-1]
        elif step == "malformed":
            return self._send(200, b'{"items": [')
        else:
            raise AssertionError(step)
        if "items" in req:  # sie
            body = {"items": [{"dense": {"dims": len(v), "values": v}} for v in vecs], "timing": {"inference_ms": 1.5}}
            headers = {"x-queue-time": "0.25"}
        elif "input" in req:  # infinity / OpenAI
            body = {"data": [{"index": i, "embedding": v} for i, v in reversed(list(enumerate(vecs)))]}
            headers = {}
        else:  # tei
            body, headers = vecs, {"x-inference-time": "2"}
        self._send(200, json.dumps(body).encode(), headers)


@pytest.fixture
def loopback():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.script = Script("ok")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def engine_for(cls, minilm, server, **kw):
    url = f"http://127.0.0.1:{server.server_address[1]}"
    return cls(minilm, minilm.resolve_profile("default"), url=url, backoff_s=0.01, **kw)


TEXTS = ["alpha", "beta gamma", "delta epsilon zeta", "eta"]


@pytest.mark.parametrize("cls", [SieEngine, InfinityEngine, TeiEngine])
def test_replies_parsed_in_input_order(minilm, loopback, cls):
    with engine_for(cls, minilm, loopback, batch_size=3) as engine:
        out = engine.embed(TEXTS, EmbedKind.query)
    assert out.shape == (4, DIMS) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.array([vector(t) for t in TEXTS], dtype=np.float32), rtol=1e-6)
    assert engine.forward_calls == 2  # 4 texts in requests of 3


def test_sie_server_timing_per_thread(minilm, loopback):
    with engine_for(SieEngine, minilm, loopback) as engine:
        engine.embed(TEXTS[:2], EmbedKind.query)
        assert engine.last_server_timing == {"inference_ms": 1.5, "queue_ms": 0.25}
        seen = []
        t = threading.Thread(target=lambda: seen.append(engine.last_server_timing))
        t.start()
        t.join()
        assert seen == [None]  # another thread has made no request


def test_5xx_retried_with_backoff_then_succeeds(minilm, loopback):
    loopback.script = Script(503, 502, "ok")
    with engine_for(SieEngine, minilm, loopback) as engine:
        engine.backoff_s = 0.1
        start = time.monotonic()
        out = engine.embed(TEXTS, EmbedKind.query)
        waited = time.monotonic() - start
    assert out.shape == (4, DIMS)
    assert loopback.script.calls == 3
    assert waited >= 0.1 + 0.2  # backoff 0.1 s, then 0.2 s


def test_retries_are_bounded(minilm, loopback):
    loopback.script = Script(503)
    with engine_for(InfinityEngine, minilm, loopback, retries=2) as engine, pytest.raises(EngineError) as err:
        engine.embed(TEXTS, EmbedKind.query)
    assert loopback.script.calls == 3
    assert "failed after 3 attempts" in str(err.value) and "HTTP 503" in str(err.value)


def test_client_error_not_retried(minilm, loopback):
    loopback.script = Script(422)
    with engine_for(TeiEngine, minilm, loopback) as engine, pytest.raises(EngineError, match="HTTP 422"):
        engine.embed(TEXTS, EmbedKind.query)
    assert loopback.script.calls == 1


def test_timeout_retried(minilm, loopback):
    loopback.script = Script("sleep", "ok")
    with engine_for(SieEngine, minilm, loopback, timeout_s=0.5) as engine:
        out = engine.embed(TEXTS, EmbedKind.query)
    assert out.shape == (4, DIMS) and loopback.script.calls == 2


def test_connection_refused_is_bounded(minilm):
    port = free_port()  # nothing listens there
    engine = SieEngine(
        minilm, minilm.resolve_profile("default"), url=f"http://127.0.0.1:{port}", retries=2, backoff_s=0.01
    )
    with engine, pytest.raises(EngineError, match="ConnectionRefused"):
        engine.embed(TEXTS, EmbedKind.query)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("nan", "NaN or inf"),
        ("wrong_dims", "9 dimensions, expected 8"),
        ("ragged", "different dimensions"),
        ("wrong_count", "asked for 2 embeddings, got 1"),
        ("malformed", "malformed JSON"),
    ],
)
@pytest.mark.parametrize("cls", [SieEngine, InfinityEngine, TeiEngine])
def test_bad_replies_rejected(minilm, loopback, cls, step, message):
    loopback.script = Script("ok", step)  # the first request fixes the dims; the second one is bad
    with engine_for(cls, minilm, loopback, batch_size=2) as engine, pytest.raises(EngineError, match=message):
        engine.embed(TEXTS, EmbedKind.query)


def test_concurrent_threads_use_own_connections(minilm, loopback):
    with engine_for(SieEngine, minilm, loopback, batch_size=1) as engine:
        results: dict[int, np.ndarray] = {}

        def work(i):
            results[i] = engine.embed([f"text {i} {j}" for j in range(5)], EmbedKind.document)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(engine._conns) == 8
    for i, arr in results.items():
        np.testing.assert_allclose(arr, np.array([vector(f"text {i} {j}") for j in range(5)]), rtol=1e-6)


def test_bad_url_is_input_error(minilm):
    with pytest.raises(InputError, match="not an http"):
        create_engine("sie", minilm, minilm.resolve_profile("default"), sie_url="127.0.0.1:80")


def test_url_from_env(minilm, loopback, monkeypatch):
    monkeypatch.setenv("SIE_EVALS_INFINITY_URL", f"http://127.0.0.1:{loopback.server_address[1]}/")
    engine = create_engine("infinity", minilm, minilm.resolve_profile("default"))
    with engine:
        assert engine.embed(TEXTS, EmbedKind.query).shape == (4, DIMS)
    assert engine.info().extra["server"] == {"managed": False, "url": f"http://127.0.0.1:{loopback.server_address[1]}"}


# ----- ManagedServer with real child processes (python -m http.server and friends)

PY = sys.executable


def http_ready(base_url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(base_url + "/", timeout=2) as resp:
        return resp.status == 200


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def group_members(pgid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(p.name))
    return out


def test_managed_start_stop_kills_group(tmp_path):
    # The server spawns a grandchild in its group: stop() must take both.
    script = (
        "import subprocess, sys, http.server, functools;"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']);"
        "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)"
        ".serve_forever()"
    )
    cmd = ServerCommand("toy", lambda port: [PY, "-c", script, str(port)], http_ready, cwd=tmp_path)
    server = ManagedServer(cmd, tmp_path / "toy.log")
    base = server.start()
    pid = server.pid
    assert base.startswith("http://127.0.0.1:") and alive(pid)
    deadline = time.monotonic() + 10
    while len(group_members(pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(group_members(pid)) == 2
    server.stop()
    assert not alive(pid) and group_members(pid) == []
    assert "stopped" in (tmp_path / "toy.log").read_text()
    server.stop()  # idempotent


def test_managed_sigterm_ignored_escalates_to_sigkill(tmp_path):
    script = (
        "import signal, sys, http.server; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)"
        ".serve_forever()"
    )
    cmd = ServerCommand("stubborn", lambda port: [PY, "-c", script, str(port)], http_ready, stop_timeout_s=1.0)
    server = ManagedServer(cmd, tmp_path / "s.log")
    server.start()
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 10
    assert server.proc.returncode == -signal.SIGKILL


def test_managed_crash_at_start_reports_log_tail(tmp_path):
    script = "import sys; print('loading model...'); print('fatal: weights not found', file=sys.stderr); sys.exit(3)"
    cmd = ServerCommand("crashy", lambda port: [PY, "-c", script], http_ready, startup_timeout_s=30)
    start = time.monotonic()
    with pytest.raises(EngineError) as err:
        ManagedServer(cmd, tmp_path / "c.log").start()
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "exited with code 3 during start-up" in msg and "fatal: weights not found" in msg and "c.log" in msg


def test_managed_startup_timeout_is_bounded(tmp_path):
    cmd = ServerCommand("slow", lambda port: [PY, "-c", "import time; time.sleep(60)"], http_ready, startup_timeout_s=2)
    server = ManagedServer(cmd, tmp_path / "t.log")
    start = time.monotonic()
    with pytest.raises(EngineError, match="not ready after 2 s"):
        server.start()
    assert time.monotonic() - start < 10
    assert not alive(server.pid)


def test_managed_port_taken(tmp_path, monkeypatch):
    script = (
        "import sys, http.server;"
        "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)"
        ".serve_forever()"
    )
    cmd = ServerCommand("toy", lambda port: [PY, "-c", script, str(port)], http_ready)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        # A fixed port that is taken: a clear error, no server left behind.
        with pytest.raises(EngineError, match=f"port {taken} on 127.0.0.1 is already in use"):
            ManagedServer(cmd, tmp_path / "p.log", port=taken).start()
        # A free port that another process grabs before the server binds it: the server fails with
        # EADDRINUSE, and the harness starts it again on another port.
        from sie_evals.lib.servers import managed

        ports = iter([taken])
        real = managed.free_port
        monkeypatch.setattr(managed, "free_port", lambda host="127.0.0.1": next(ports, None) or real(host))
        server = ManagedServer(cmd, tmp_path / "q.log")
        try:
            server.start()
            assert server.port != taken and alive(server.pid)
            assert "Address already in use" in (tmp_path / "q.log").read_text()
        finally:
            server.stop()


def test_tei_missing_binary_says_how_to_get_it(minilm, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    engine = create_engine("tei", minilm, minilm.resolve_profile("default"))
    with engine, pytest.raises(EngineError, match="cargo install") as err:
        engine.embed(["x"], EmbedKind.query)
    assert "--tei-url" in str(err.value)


def test_server_not_provisioned_is_clear(minilm, monkeypatch, tmp_path):
    monkeypatch.setenv("SIE_EVALS_SERVERS_DIR", str(tmp_path / "nothing"))
    engine = create_engine("sie", minilm, minilm.resolve_profile("default"))
    with engine, pytest.raises(EngineError, match="sie-bench servers install sie"):
        engine.embed(["x"], EmbedKind.query)


# ----- helpers shared by the real-server tests (test_servers_sie.py, test_servers_infinity.py)


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[8:-1])
    except OSError:
        pass
    return out


def _decode_addr(hex_addr: str) -> str:
    ip_hex, port_hex = hex_addr.split(":")
    if len(ip_hex) == 8:
        ip = ".".join(str(b) for b in bytes.fromhex(ip_hex)[::-1])
    else:
        words = [bytes.fromhex(ip_hex[i : i + 8])[::-1] for i in range(0, 32, 8)]
        raw = b"".join(words)
        ip = socket.inet_ntop(socket.AF_INET6, raw)
    return f"{ip}:{int(port_hex, 16)}"


def listening_sockets(pids: list[int]) -> list[str]:
    """Every TCP socket in LISTEN state owned by one of `pids`, as ip:port (from /proc/net/tcp{,6})."""
    inodes = set().union(*(_socket_inodes(p) for p in pids)) if pids else set()
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                out.append(_decode_addr(fields[1]))
    return out


def children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(p.name))
    return out


def is_loopback(addr: str) -> bool:
    ip = addr.rsplit(":", 1)[0]
    return ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def test_listening_sockets_helper():
    """The /proc parser used to check that servers bind 127.0.0.1 only, checked on known sockets."""
    with socket.socket() as a, socket.socket(socket.AF_INET6) as b:
        a.bind(("127.0.0.1", 0))
        a.listen()
        b.bind(("::", 0))
        b.listen()
        found = listening_sockets([os.getpid()])
        assert f"127.0.0.1:{a.getsockname()[1]}" in found
        assert f":::{b.getsockname()[1]}" in found
        assert not is_loopback(f":::{b.getsockname()[1]}")


def test_dagster_partitions_gain_server_sources(configs_dir):
    """Listing sie and infinity in a model config's sources adds their Dagster partitions, no code change."""
    from ruamel.yaml import YAML

    from sie_evals.defs.evals.partitions import eval_keys
    from sie_evals.lib.config.model_config import load_all_model_configs

    cfg = configs_dir / "sentence-transformers__all-MiniLM-L6-v2.yaml"
    tree = YAML().load(cfg.read_text())
    tree["sources"] = ["local"]
    with open(cfg, "w") as fh:
        YAML().dump(tree, fh)
    before = {str(k) for k in eval_keys(load_all_model_configs(configs_dir))}
    tree["sources"] = ["local", "sie", "infinity"]
    with open(cfg, "w") as fh:
        YAML().dump(tree, fh)
    after = {str(k) for k in eval_keys(load_all_model_configs(configs_dir))}
    added = after - before
    assert "all-MiniLM-L6-v2:beir/SciFact:sie" in added and "all-MiniLM-L6-v2:beir/SciFact:infinity" in added
    assert {k.rsplit(":", 1)[1] for k in added} == {"sie", "infinity"}


def test_sigterm_to_harness_stops_its_server(tmp_path):
    """`kill <harness pid>` (SIGTERM): the harness unwinds and stops the server it started."""
    import subprocess

    harness = f"""
import sys, time, http.server
from pathlib import Path
from sie_evals.lib.servers.managed import ManagedServer, ServerCommand
from sie_evals_tests.test_servers_http import http_ready
script = ("import sys, http.server; http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), "
          "http.server.SimpleHTTPRequestHandler).serve_forever()")
server = ManagedServer(ServerCommand("toy", lambda p: [sys.executable, "-c", script, str(p)], http_ready),
                       Path({str(tmp_path / "h.log")!r}))
try:
    server.start()
    print(server.pid, flush=True)
    time.sleep(120)
finally:
    server.stop()
"""
    proc = subprocess.Popen([PY, "-c", harness], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        server_pid = int(proc.stdout.readline())
        assert alive(server_pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert not alive(server_pid) and group_members(server_pid) == []
