"""The openai source behaves like the official OpenAI clients (issue 22 item 8, defect N11): Retry-After
on 429/503 within the retry budget, backoff with jitter, a per-request timeout that is a setting, and
the API key from $OPENAI_API_KEY, never written anywhere. Every test talks to a real HTTP server on
127.0.0.1 whose embeddings come from the real all-MiniLM-L6-v2 (the local engine)."""

import email.utils
import json
import os
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.engines import EmbedKind
from sie_evals.lib.engines.http import RetryPolicy, retry_after_s

SLICE = ["--limit-queries", "20", "--corpus-size", "300", "--no-progress", "--no-record"]
EVAL = ["eval", "all-MiniLM-L6-v2", "-t", "beir/SciFact", "-s", "openai"]


class EmbeddingServer:
    """POST /v1/embeddings answered by the real model, after the scripted replies run out: each script
    step is (status, headers) or "hang" (read the request, never answer). Records every request."""

    def __init__(self, engine, script=(), repeat_last=False, key: str | None = None):
        self.script = list(script)
        self.repeat_last = repeat_last
        self.times: list[float] = []
        self.auth: list[str | None] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value() if callable(value) else value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.times.append(time.monotonic())
                server.auth.append(self.headers.get("Authorization"))
                step = None
                if server.script:
                    step = server.script[0] if server.repeat_last and len(server.script) == 1 else server.script.pop(0)
                if step == "hang":
                    server.release.wait(120)
                    return
                if step is not None:
                    return self._send(step[0], b'{"error": {"message": "slow down"}}', step[1])
                if key and self.headers.get("Authorization") != f"Bearer {key}":
                    return self._send(401, b'{"error": {"message": "invalid api key"}}')
                vectors = engine.embed(request["input"], EmbedKind.document).tolist()
                data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
                self._send(200, json.dumps({"object": "list", "data": data}).encode())

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(local_engine, tmp_path, monkeypatch):
    monkeypatch.setenv("SIE_EVALS_CACHE_DIR", str(tmp_path / "cache"))  # every vector is asked of the server
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("SIE_EVALS_OPENAI_URL", raising=False)
    servers: list[EmbeddingServer] = []

    def start(*script, repeat_last=False, key=None) -> EmbeddingServer:
        servers.append(EmbeddingServer(local_engine, script, repeat_last, key))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def http_date(seconds_ahead: float):
    return lambda: email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


def run_cli(*args: str):
    start = time.monotonic()
    result = CliRunner().invoke(app, [*EVAL, *args, *SLICE])
    return result, time.monotonic() - start


@pytest.mark.slow  # a whole (sliced) eval through the server: about a minute on a shared 2-core machine
def test_429_retry_after_seconds_and_http_date_are_waited_then_the_eval_succeeds(serve, tmp_path):
    server = serve((429, {"Retry-After": "1"}), (429, {"Retry-After": http_date(2)}))
    out = tmp_path / "report.json"
    result, _ = run_cli("--openai-url", server.url, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["sources"]["openai"]["metrics"]["ndcg_at_10"] > 0.3
    gaps = server.gaps()
    assert len(server.times) >= 3 and gaps[0] >= 0.95  # Retry-After: 1
    assert gaps[1] >= 0.95  # an HTTP-date 2 s ahead, at one-second resolution: between 1 and 2 s


def test_always_429_fails_clearly_after_the_retry_budget(serve):
    server = serve((429, {"Retry-After": "1"}), repeat_last=True)
    result, elapsed = run_cli("--openai-url", server.url)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert f"POST {server.url}/v1/embeddings failed after 3 attempts" in text and "HTTP 429" in text
    assert len(server.times) == 3  # the default budget: 2 retries, as the OpenAI client
    assert all(g >= 0.95 for g in server.gaps()) and elapsed >= 2


def test_a_huge_retry_after_fails_at_once_instead_of_sleeping(serve):
    server = serve((503, {"Retry-After": "86400"}), repeat_last=True)
    result, elapsed = run_cli("--openai-url", server.url)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "asking to retry after 86400 s" in text and "more than the 120 s" in text
    assert len(server.times) == 1 and elapsed < 60


def test_503_without_retry_after_backs_off_exponentially_with_jitter(serve, minilm):
    from sie_evals.lib.engines import create_engine

    server = serve((503, {}), (503, {}))
    engine = create_engine("openai", minilm, minilm.resolve_profile("default"), openai_url=server.url)
    with engine:
        out = engine.embed(["a protein", "a gene"], EmbedKind.query)
    assert out.shape == (2, 384) and len(server.times) == 3
    first, second = server.gaps()
    assert 0.5 <= first <= 0.5 * 1.25 + 0.3 and 1.0 <= second <= 1.0 * 1.25 + 0.3


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "1"}, 1.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # milliseconds win, as in openai-python
        ({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, 10.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_header_forms(headers, seconds):
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert retry_after_s(headers, now=now) == seconds


def test_backoff_doubles_is_capped_and_jittered():
    policy = RetryPolicy()
    assert [policy.backoff_s(n, rand=lambda: 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert policy.backoff_s(0, rand=lambda: 1.0) == 0.625
    assert len({policy.backoff_s(2) for _ in range(20)}) > 1  # random, so clients do not retry in step


@pytest.mark.timeout(120)
def test_a_hung_server_fails_within_the_configured_timeout_naming_url_and_timeout(serve, monkeypatch):
    server = serve("hang", "hang", "hang")
    monkeypatch.setenv("SIE_EVALS_OPENAI_TIMEOUT_S", "1")
    monkeypatch.setenv("SIE_EVALS_OPENAI_MAX_RETRIES", "1")
    password = "pw-" + secrets.token_hex(8)
    url = server.url.replace("http://", f"http://ops:{password}@")
    result, elapsed = run_cli("--openai-url", url)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    port = server.url.rsplit(":", 1)[1]
    assert f"POST http://***@127.0.0.1:{port}/v1/embeddings failed after 2 attempts" in text
    assert "no reply within the 1 s timeout (set by $SIE_EVALS_OPENAI_TIMEOUT_S)" in text
    assert password not in result.output and "Traceback" not in result.output
    # two attempts of 1 s and one backoff of at most 0.625 s (was 4 x 120 s)
    assert len(server.times) == 2 and server.gaps()[0] < 1 + 0.625 + 0.5
    assert elapsed < 30


@pytest.mark.parametrize(
    ("name", "value"),
    [("SIE_EVALS_OPENAI_TIMEOUT_S", "0"), ("SIE_EVALS_OPENAI_TIMEOUT_S", "inf"), ("SIE_EVALS_OPENAI_MAX_RETRIES", "x")],
)
def test_a_malformed_setting_is_exit_2_naming_it(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, [*EVAL, "--openai-url", "http://127.0.0.1:9", *SLICE])
    assert result.exit_code == 2, result.output
    assert f"${name}" in result.output and "Traceback" not in result.output


@pytest.mark.slow  # a whole (sliced) eval through the server
def test_the_key_comes_from_openai_api_key_and_is_never_written(serve, tmp_path, monkeypatch, caplog):
    key = "sk-test-" + secrets.token_hex(16)
    server = serve(key=key)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    out = tmp_path / "report.json"
    result, _ = run_cli("--openai-url", server.url, "-o", str(out))  # the default profile names no api_key_env
    assert result.exit_code == 0, result.output
    assert server.auth and set(server.auth) == {f"Bearer {key}"}
    report = json.loads(out.read_text())
    assert report["sources"]["openai"]["run_conditions"]["engine"] == "openai"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    written += [p for p in Path(os.environ["SIE_EVALS_RESULTS_DIR"]).rglob("*") if p.is_file()]
    assert len(written) > 3
    assert key not in result.output and key not in caplog.text
    for path in written:
        assert key.encode() not in path.read_bytes(), path


def test_without_a_key_the_server_refusal_is_a_clear_engine_error(serve):
    server = serve(key="sk-needed")
    result, _ = run_cli("--openai-url", server.url)
    assert result.exit_code == 1 and "HTTP 401" in result.output and "Traceback" not in result.output
