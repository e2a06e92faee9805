"""The shared base of engines that embed through an HTTP server (sie, infinity, tei).

Either the harness starts the server itself (a `ManagedServer`: free port on 127.0.0.1, log kept
with the run, stopped on every exit path) or it talks to a running one (`url=`). Requests are JSON
over keep-alive connections, one connection per thread, so several threads may call `embed` at once
(the perf generator does). Retries follow the official OpenAI client's rules (openai-python
`_should_retry` / `_calculate_retry_timeout`): HTTP 408, 409, 429 and every 5xx, timeouts and
connection errors are retried up to `retries` times; the wait is the server's `retry-after-ms` or
`Retry-After` (seconds or an HTTP-date) when it gives one, else exponential backoff with jitter. A
server asking for a longer wait than `RetryPolicy.max_retry_after_s` fails the request at once, with
that said, rather than stalling the run. When a managed server has died, the error says so at once,
with the tail of its log. Malformed JSON, wrong counts, wrong dimensions and NaN are rejected.
"""

import dataclasses
import datetime
import email.utils
import http.client
import json
import math
import os
import random
import shutil
import tempfile
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from sie_evals.lib.config.model_config import ModelConfig, OutputType, ResolvedProfile
from sie_evals.lib.config.weights import weights_id
from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import EngineError, InputError
from sie_evals.lib.core.sources import SOURCES, ServerMode
from sie_evals.lib.core.urls import http_url_problem, redact_url
from sie_evals.lib.engines.base import EmbedKind, Engine, EngineInfo
from sie_evals.lib.engines.validation import validate_embeddings
from sie_evals.lib.servers.managed import ManagedServer, ServerCommand

RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx: request timeout, lock timeout, rate limit


def should_retry(status: int, headers: Mapping[str, str] | None = None) -> bool:
    """Whether a reply with this status is worth another attempt (lower-case `headers`): the server's
    `x-should-retry: true|false` wins, as in the OpenAI client."""
    hint = (headers or {}).get("x-should-retry")
    if hint in ("true", "false"):
        return hint == "true"
    return status in RETRY_STATUS or status >= 500


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a reply asks for, in seconds, from its lower-case `headers`: `retry-after-ms`, else
    `retry-after` as seconds or as an HTTP-date; None when absent or unreadable."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            delay = float(value)
        except ValueError:
            continue
        return delay / divisor if not math.isnan(delay) else None
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": HTTP-dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp() - (time.time() if now is None else now)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long to wait: the OpenAI client's constants (0.5 s doubling up to 8 s,
    and a 120 s ceiling on a server-requested wait). Its jitter is up to 25 % of the wait; here it is
    added rather than taken off, so no retry comes sooner than the nominal backoff."""

    retries: int = 3
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_retry_after_s: float = 120.0

    def backoff_s(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The wait before retry number `retry` (0-based) when the server named none."""
        return min(self.initial_delay_s * 2.0 ** min(retry, 60), self.max_delay_s) * (1 + 0.25 * rand())

    def wait_s(self, retry: int, asked_s: float | None) -> float:
        """The server's wait when it gave a usable one (the caller refuses one above the ceiling),
        else backoff."""
        if asked_s is not None and math.isfinite(asked_s) and 0 < asked_s <= self.max_retry_after_s:
            return asked_s
        return self.backoff_s(retry)


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON


def parse_base_url(url: str, what: str) -> tuple[str, str, int, str]:
    """scheme, host, port, path prefix of a server URL; a clear InputError for anything else."""
    if problem := http_url_problem(url):
        raise InputError(f"{what}: {redact_url(url)!r} is not an http(s)://host[:port] URL: {problem}")
    parts = urlsplit(url.strip())
    assert parts.hostname is not None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


def server_log_dir() -> Path:
    """Server logs are kept with the run's results (SIE_EVALS_RESULTS_DIR)."""
    return paths.results_dir() / "server_logs"


class HttpEngine(Engine):
    """Subclasses define the server command (when managed), the embed request and its parsing."""

    name = "http"

    @property
    def url_env(self) -> str:
        """e.g. SIE_EVALS_SIE_URL: a running server to use instead of starting one (the source table's)."""
        spec = SOURCES.get(self.name)
        return spec.url_env if spec else ""

    def __init__(
        self,
        model: ModelConfig,
        profile: ResolvedProfile,
        url: str | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        threads: int | None = None,
        progress: bool = False,
        retries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 120.0,
        max_retry_after_s: float = RetryPolicy.max_retry_after_s,
        log_dir: Path | None = None,
        port: int | None = None,
        startup_timeout_s: float | None = None,
    ):
        super().__init__(model, profile)
        url = url or (os.environ.get(self.url_env) if self.url_env else None) or None
        self.url = url.rstrip("/") if url else None
        spec = SOURCES.get(self.name)
        if not self.url and spec and spec.server == ServerMode.external:
            raise InputError(
                f"source {self.name} needs a server: give {spec.url_option} URL (or --server-url {self.name}=URL) "
                f"or set ${spec.url_env} ({spec.url_help or spec.help})"
            )
        if self.url:
            parse_base_url(self.url, f"--{self.name}-url")
        self.device = device or "cpu"
        self.batch_size = batch_size or profile.batch_size
        self.threads = threads
        self.progress = progress
        self.retry = RetryPolicy(retries=retries, initial_delay_s=backoff_s, max_retry_after_s=max_retry_after_s)
        self.timeout_s = timeout_s
        self.log_dir = Path(log_dir) if log_dir else None
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.server: ManagedServer | None = None
        self.run_dir: Path | None = None
        self.expected_dims: int | None = None
        self.server_details: dict[str, Any] = {}  # what the server said about itself (e.g. TEI's /info)
        self._base: tuple[str, str, int, str] | None = None
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        self._count_lock = threading.Lock()
        self._start_lock = threading.RLock()

    @property
    def retries(self) -> int:
        return self.retry.retries

    @retries.setter
    def retries(self, value: int) -> None:
        self.retry = dataclasses.replace(self.retry, retries=value)

    @property
    def backoff_s(self) -> float:
        return self.retry.initial_delay_s

    @backoff_s.setter
    def backoff_s(self, value: float) -> None:
        self.retry = dataclasses.replace(self.retry, initial_delay_s=value)

    # ----- what subclasses provide
    @abstractmethod
    def server_command(self) -> ServerCommand:
        """How to start this server for this model (only called when no url was given)."""

    @abstractmethod
    def _embed_request(self, texts: list[str], kind: EmbedKind) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of one embed request; `kind` tells the server query from document
        where its API has a flag for it."""

    def request_headers(self) -> dict[str, str]:
        """Extra headers for every request (e.g. authorization)."""
        return {}

    def timeout_hint(self) -> str:
        """Where the per-request timeout is set, for the message of a request that timed out."""
        return ""

    def redact(self, text: str) -> str:
        """Error text with secrets removed (a server may echo a request back)."""
        return text.replace(self.url, redact_url(self.url)) if self.url else text

    @abstractmethod
    def _parse_vectors(self, body: Any) -> list[Any]:
        """The list of vectors in a reply, in input order; raise EngineError for a malformed reply."""

    def software_version(self) -> str:
        return self.name

    def _timing(self, reply: Reply) -> dict[str, float] | None:
        return None

    # ----- lifecycle
    @property
    def managed(self) -> bool:
        return self.url is None

    @property
    def base_url(self) -> str | None:
        # for messages and reports only (requests use self._base): user info never shows
        url = self.server.base_url if self.server and self.server.port else self.url
        return redact_url(url) if url else url

    def start(self) -> None:
        with self._start_lock:  # several threads may race to the first embed: one server only
            super().start()

    def _start(self) -> None:
        if self.url:
            self._base = parse_base_url(self.url, f"--{self.name}-url")
            return
        # Private scratch (models dir, IPC socket, HF_HOME): short path, removed on stop. The log is kept.
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"sie-evals-{self.name}-"))
        try:
            command = self.server_command()
            if self.startup_timeout_s:
                command.startup_timeout_s = self.startup_timeout_s
            log_dir = self.log_dir or server_log_dir()
            stamp = time.strftime("%Y%m%d-%H%M%S")
            log_path = log_dir / f"{self.name}-{stamp}-{os.getpid()}-{id(self) & 0xFFFF:04x}.log"
            self.server = ManagedServer(command, log_path, port=self.port)
            base = self.server.start()  # stops the process itself when start-up fails
            self._base = parse_base_url(base, self.name)
        except BaseException:
            self._stop()  # start() did not complete, so stop() would not run: clean up here
            raise

    def _stop(self) -> None:
        for conn in self._conns:
            conn.close()
        self._conns.clear()
        self._local = threading.local()
        if self.server:
            self.server.stop()
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None

    def info(self) -> EngineInfo:
        base_url = redact_url(self.base_url) if self.base_url else None
        extra: dict[str, Any] = {"batch_size": self.batch_size, "device": self.device, "url": base_url}
        extra.update(self.server_details)
        if self.server:
            extra["server"] = {
                "managed": True,
                "url": self.server.base_url if self.server.port else None,
                "pid": self.server.pid,
                "log": str(self.server.log_path),
            }
        elif self.url:
            extra["server"] = {"managed": False, "url": redact_url(self.url)}
        return EngineInfo(
            engine=self.name,
            version=self.software_version(),
            model_id=self.model.model_id,
            model_revision=self.model.revision,
            weights=self.weights_id(),
            extra=extra,
        )

    def weights_id(self) -> str:
        if self.url:
            # whatever that running server loaded under that name; the URL keeps two servers' vectors
            # apart in the embedding cache (the server's version cannot be asked for cheaply here)
            return f"server:{redact_url(self.url)}:{self.model.model_id}"
        return weights_id(self.model)

    # ----- HTTP
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            assert self._base is not None, "engine not started"
            scheme, host, port, _ = self._base
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = cls(host, port, timeout=self.timeout_s)
            self._local.conn = conn
            with self._count_lock:
                self._conns.append(conn)
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _died(self) -> EngineError | None:
        if self.server is not None and self.server.proc is not None and not self.server.alive():
            return self.server.failure(f"the server {self.server.exit_description()} during the run")
        return None

    def request(self, method: str, path: str, body: Any = None) -> Reply:
        """One JSON request with bounded retries on 5xx, timeouts and connection errors."""
        self.start()
        return self._request(method, path, body)

    def _request(self, method: str, path: str, body: Any = None) -> Reply:
        try:
            return self._request_unredacted(method, path, body)
        except EngineError as err:
            raise EngineError(self.redact(str(err))) from None

    def _request_unredacted(self, method: str, path: str, body: Any = None) -> Reply:
        assert self._base is not None, "engine not started"
        url = redact_url(f"{self.base_url}{path}")
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", **self.request_headers()}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        failure = ""
        waited = 0.0
        attempts = self.retry.retries + 1
        wait = 0.0
        for attempt in range(attempts):
            if attempt:
                time.sleep(wait)
                waited += wait
            wait = self.retry.backoff_s(attempt)  # unless the reply names its own
            try:
                conn = self._conn()
                conn.request(method, self._base[3] + path, body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                status, resp_headers = resp.status, {k.lower(): v for k, v in resp.getheaders()}
            except (OSError, http.client.HTTPException) as err:
                self._drop_conn()
                failure = self._describe(err)
                if died := self._died():
                    raise died from None
                continue
            if status >= 300 and should_retry(status, resp_headers):
                failure = f"HTTP {status}: {_excerpt(raw, self.redact)}"
                if died := self._died():
                    raise died from None
                asked = retry_after_s(resp_headers)
                if asked is not None and math.isfinite(asked) and asked > self.retry.max_retry_after_s:
                    raise EngineError(
                        f"{self.name}: {method} {url} returned HTTP {status} asking to retry after {asked:g} s "
                        f"(Retry-After), more than the {self.retry.max_retry_after_s:g} s this client waits; "
                        f"not retried: {_excerpt(raw, self.redact)}"
                    )
                wait = self.retry.wait_s(attempt, asked)
                continue
            if status >= 300:
                raise EngineError(f"{self.name}: {method} {url} returned HTTP {status}: {_excerpt(raw, self.redact)}")
            try:
                parsed = json.loads(raw)
            except ValueError as err:
                raise EngineError(
                    f"{self.name}: {method} {url} returned malformed JSON ({err}): {_excerpt(raw, self.redact)}"
                ) from None
            return Reply(status, resp_headers, parsed)
        raise EngineError(
            f"{self.name}: {method} {url} failed after {attempts} attempts ({waited:.1f} s of waits between them); "
            f"last error: {failure}"
        )

    def _describe(self, err: Exception) -> str:
        if isinstance(err, TimeoutError):  # socket.timeout: no reply within timeout_s
            hint = self.timeout_hint()
            return f"no reply within the {self.timeout_s:g} s timeout" + (f" (set by {hint})" if hint else "")
        return f"{type(err).__name__}: {err}"

    # ----- embedding
    @property
    def last_server_timing(self) -> dict[str, float] | None:
        """Server-side timing of this thread's last embed call (summed over its requests), if the
        server reports it (SIE: queue/tokenization/inference ms). Per thread, so concurrent callers
        each see their own."""
        return getattr(self._local, "timing", None)

    def _embed_prepared(self, texts: list[str], kind: EmbedKind) -> np.ndarray:
        # Longest first, like the local engine: similar lengths share a request, so little padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: np.ndarray | None = None
        timing: dict[str, float] | None = None
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            path, body = self._embed_request([texts[i] for i in idx], kind)
            reply = self._request("POST", path, body)
            with self._count_lock:
                self.forward_calls += 1
            vectors = self._to_array(self._parse_vectors(reply.body), len(idx))
            if t := self._timing(reply):
                timing = {k: (timing or {}).get(k, 0.0) + v for k, v in t.items()}
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[idx] = vectors
        self._local.timing = timing
        assert out is not None
        return out

    # ----- perf: requests encoded before the run and sent by the fast generator (lib/perf/aio.py)
    def perf_request(self, texts: list[str], kind: EmbedKind) -> tuple[str, dict[str, str], bytes] | None:
        """(URL, headers, body) of the one request that embeds `texts`, or None when a call is not one
        plain JSON request (several per call, another output or reply format, server timing to read)."""
        if (
            len(texts) > self.batch_size
            or self.profile.output != OutputType.dense
            or type(self)._embed_prepared is not HttpEngine._embed_prepared
            or type(self)._timing is not HttpEngine._timing
        ):
            return None
        self.start()
        assert self._base is not None
        scheme, host, port, prefix = self._base
        path, body = self._embed_request([self.prefix(kind) + t for t in texts], kind)
        host = f"[{host}]" if ":" in host else host
        headers = {"Accept": "application/json", "Content-Type": "application/json", **self.request_headers()}
        return f"{scheme}://{host}:{port}{prefix}{path}", headers, json.dumps(body).encode()

    def check_perf_reply(self, raw: bytes, n: int) -> None:
        """Validate a reply to a perf_request of n texts as embed() would (EngineError when malformed)."""
        try:
            parsed = json.loads(raw)
        except ValueError as err:
            raise EngineError(
                f"{self.name}: a perf reply is malformed JSON ({err}): {_excerpt(raw, self.redact)}"
            ) from None
        validate_embeddings(self._to_array(self._parse_vectors(parsed), n), n, self.name)

    def _to_array(self, vectors: list[Any], expected: int) -> np.ndarray:
        if not isinstance(vectors, list):
            raise EngineError(f"{self.name}: expected a list of embeddings in the reply, got {type(vectors).__name__}")
        if len(vectors) != expected:
            raise EngineError(f"{self.name}: asked for {expected} embeddings, got {len(vectors)}")
        lengths = {len(v) if isinstance(v, list) else -1 for v in vectors}
        if -1 in lengths:
            raise EngineError(f"{self.name}: an embedding in the reply is not a list of numbers")
        if len(lengths) > 1:
            raise EngineError(f"{self.name}: embeddings in one reply have different dimensions {sorted(lengths)}")
        try:
            arr = validate_embeddings(vectors, expected, self.name)
        except (TypeError, ValueError) as err:
            raise EngineError(f"{self.name}: embeddings in the reply are not numbers ({err})") from None
        dims = arr.shape[1]
        if self.expected_dims is None:
            self.expected_dims = dims
        elif dims != self.expected_dims:
            raise EngineError(f"{self.name}: embeddings have {dims} dimensions, expected {self.expected_dims}")
        return arr


def weights_dims(weights_dir: str) -> int | None:
    """The output width of a sentence-transformers folder: its last Dense layer, else hidden_size."""
    folder = Path(weights_dir)
    try:
        modules = json.loads((folder / "modules.json").read_text())
        for m in reversed(modules):
            if m.get("type", "").endswith("Dense"):
                cfg = json.loads((folder / m["path"] / "config.json").read_text())
                return int(cfg["out_features"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return int(json.loads((folder / "config.json").read_text())["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _excerpt(raw: bytes, redact=None, n: int = 300) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    if redact is not None:  # before cutting: a secret cut in half would escape redaction
        text = redact(text)
    return text if len(text) <= n else text[:n] + "..."
