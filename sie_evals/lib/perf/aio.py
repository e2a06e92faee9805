"""The fast generator for HTTP servers, on an event loop (uvloop when installed): keep-alive
connections, every request encoded before the run, and nothing on the hot path but send, receive and
two perf_counter stamps. When one core is not enough (high rates, many clients) the load is split over
several generator processes that share one start time and one schedule; each keeps its own records
and HdrHistogram, and the parent merges them exactly (histogram.merged).

Two clients, one rule (fast_path): plain http:// (no TLS, no credentials in the URL) runs on the fast
client, uvloop's transports with replies parsed by httptools (the pair uvicorn runs on): a request is
one write of pre-encoded bytes, a reply one parser feed, and a closed-loop client's next request leaves
from the callback that completed the previous one (wrk's design): ~10 us of CPU a request against
aiohttp's ~100 us. Everything else (https, URLs with user info) runs on aiohttp.

The semantics are load.py's and openloop.py's: closed loop (each client sends the next request when
its reply came), open loop (latency from the scheduled send time, in-flight cap with `late` or
`drop`, a deadline after which nothing is sent). Request i sends bodies[i % len(bodies)]. Every
reply's status is checked (not 2xx: a failed request, no retry, as in wrk and k6); a connection that
fails or times out fails its request and is replaced; the bodies of the first SAMPLES successful
replies of each process are returned so the engine can validate them after the run (parsing every
reply would be generator work inside the measurement)."""

import asyncio
import contextlib
import itertools
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

import httptools
import numpy as np

from sie_evals.lib.core.errors import EngineError
from sie_evals.lib.perf import histogram
from sie_evals.lib.perf.openloop import (
    LEAD_IN_S,
    OpenLoopRecords,
    arrival_chunks,
    duration_deadline,
    with_warmup,
)

SAMPLES = 8  # reply bodies kept per process for validation after the run
# Sleep on the loop's timers to this close to a send, then spin (yield to the loop until the send
# time). uvloop's timers have whole milliseconds (asyncio.sleep(0.0004) returns at the next loop pass,
# 0.0015 after 1 or 2 ms), so even at 0 the last sub-millisecond before a send is spun, which sends on
# time when a core is free. A longer spin on a shared machine (load average 8 on 2 cores) gets the
# process preempted for whole time slices: measured p99 at 1,000 req/s against nginx 9-12 ms at 0,
# 15-170 ms with 1 ms of spin.
SPIN_S = 0.0
# What one generator process sustains against a fast server on one core, with headroom: above it the
# load is split. aiohttp: ~10k req/s measured with nginx on 127.0.0.1 (benchmarks/RESULTS.md); the fast
# path (~10 us of CPU a request) several times that, so one process takes 10,000/s and leaves the
# other core to the server (two spinning generator processes and nginx on 2 cores: p99 30 ms).
RATE_PER_PROCESS = 4000.0
CLIENTS_PER_PROCESS = 64
FAST_RATE_PER_PROCESS = 20000.0
FAST_CLIENTS_PER_PROCESS = 256
BURST = 16  # a dispatcher behind its schedule yields to the loop after this many sends
SPAWN_TIMEOUT_S = 60.0
PRECONNECT = 16  # open loop: connections opened before the start (more as the load needs them)


@dataclass(frozen=True)
class HttpTarget:
    """What a perf run sends: POST url with these headers; request i carries bodies[i % len(bodies)]."""

    url: str
    headers: dict[str, str]
    bodies: tuple[bytes, ...]
    timeout_s: float = 60.0
    # "aiohttp": that client whatever the URL; "" (or "fast"): fast_path's rule. The overhead
    # calibration sends a target's requests to an http:// null endpoint with the client it gets.
    client: str = ""


class LoadShape(Protocol):
    """What Job.from_spec reads of a load.LoadSpec (load.py imports this module, not the other way)."""

    @property
    def mode(self) -> str: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def max_concurrency(self) -> int: ...
    @property
    def warmup_requests(self) -> int: ...


@dataclass(frozen=True)
class Job:
    """One generator process's share of one trial. Closed loop: `clients` clients send the requests
    i = process, process + processes, ... Open loop: the whole schedule is generated (same seed) and
    this process sends positions i with i % processes == process, at most `clients` in flight."""

    target: HttpTarget
    mode: str  # closed | open
    clients: int
    warm: int
    requests: int | None
    duration_s: float | None
    process: int = 0
    processes: int = 1
    rate: float | None = None
    arrival: str = "poisson"
    burstiness: float = 1.0
    seed: int = 0
    on_cap: str = "late"
    start: float | None = None  # perf_counter (CLOCK_MONOTONIC: one clock for every process)

    @classmethod
    def from_spec(cls, target: HttpTarget, spec: "LoadShape") -> "Job":
        """The whole job of one trial of `spec`, before run_parts splits it over processes. Every field
        LoadSpec has under the same name is copied, so a new load field is declared in the two dataclasses
        and copied nowhere by hand."""
        same = {
            f.name: getattr(spec, f.name) for f in fields(cls) if f.name not in _PER_PROCESS and hasattr(spec, f.name)
        }
        clients = spec.concurrency if spec.mode == "closed" else spec.max_concurrency
        return cls(target=target, clients=clients, warm=spec.warmup_requests, **same)


_PER_PROCESS = frozenset({"process", "processes", "start"})  # run_parts sets them; LoadSpec.processes is a count


@dataclass
class Part:
    """What one process measured: records of its successful counted requests (closed loop:
    scheduled == sent), its latency HdrHistogram (encoded) and sample reply bodies."""

    rec: OpenLoopRecords
    hist: str
    samples: list[tuple[int, bytes]] = field(default_factory=list)


def processes_for(mode: str, clients: int, rate: float | None, cpus: int | None = None, fast: bool = False) -> int:
    """How many generator processes a load needs: one per RATE_PER_PROCESS requests/s offered (open
    loop) or per CLIENTS_PER_PROCESS clients (closed loop), the FAST_ ones on the fast path (`fast`:
    fast_path(target)), never more than the CPUs."""
    cpus = cpus or os.cpu_count() or 1
    per_rate, per_clients = (
        (FAST_RATE_PER_PROCESS, FAST_CLIENTS_PER_PROCESS) if fast else (RATE_PER_PROCESS, CLIENTS_PER_PROCESS)
    )
    need = math.ceil(rate / per_rate) if mode == "open" and rate else math.ceil(clients / per_clients)
    return max(1, min(cpus, need))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # the standard loop: slower, same semantics
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _excerpt(raw: bytes, n: int = 200) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= n else text[:n] + "..."


class _Recorder:
    """Columns of the successful counted requests, counters for the rest (like openloop._Rows)."""

    def __init__(self) -> None:
        import array

        self.index = array.array("q")
        self.scheduled = array.array("d")
        self.sent = array.array("d")
        self.ended = array.array("d")
        self.rec = OpenLoopRecords(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), np.zeros(0), {})
        self.samples: list[tuple[int, bytes]] = []

    def came(self, t: float) -> None:
        rec = self.rec
        if rec.n_scheduled == 0 or t < rec.first_scheduled:
            rec.first_scheduled = t
        if not t <= rec.last_scheduled:
            rec.last_scheduled = t
        rec.n_scheduled += 1

    def error(self, message: str) -> None:
        if len(self.rec.errors) < 5:
            self.rec.errors.append(message)

    def part(self) -> Part:
        rec = self.rec
        index = np.frombuffer(self.index, dtype=np.int64) if len(self.index) else np.zeros(0, dtype=np.int64)
        order = np.argsort(index, kind="stable")

        def col(a) -> np.ndarray:
            return np.frombuffer(a, dtype=np.float64)[order] if len(a) else np.zeros(0)

        rec.index, rec.scheduled = index[order], col(self.scheduled)
        rec.sent, rec.ended = col(self.sent), col(self.ended)
        # the same arithmetic as Trial.histogram (ms, then us): the merged histogram is the one of all
        hist = histogram.histogram_of((rec.ended - rec.scheduled) * 1000.0)
        return Part(rec, histogram.encode(hist), self.samples)


async def _run(job: Job, stop: Any) -> Part:
    out = _Recorder()
    rec = out.rec

    def done(i: int, scheduled: float, sent: float, ended: float, raw: bytes | None, failure: str) -> None:
        if raw is not None and len(out.samples) < SAMPLES:
            out.samples.append((i, raw))
        if i < job.warm:
            if raw is None:
                out.error(failure)
            return
        if raw is None:
            rec.n_failed += 1
            out.error(failure)
        else:
            out.index.append(i)
            out.scheduled.append(scheduled)
            out.sent.append(sent)
            out.ended.append(ended)
        if not ended <= rec.last_ended:  # NaN at first
            rec.last_ended = ended

    start = job.start if job.start is not None else time.perf_counter() + LEAD_IN_S
    if fast_path(job.target):
        if job.mode == "closed":
            await _closed_fast(job, stop, start, done, out)
        else:
            sender = _ConnSender(job, stop, done)
            await sender.prepare(min(job.clients, PRECONNECT))
            await _open(job, stop, start, sender, out)
    else:
        await _run_aiohttp(job, stop, start, done, out)
    return out.part()


async def _run_aiohttp(job: Job, stop: Any, start: float, done, out: _Recorder) -> None:
    """TLS, credentials in the URL, anything the fast path does not take: aiohttp's client."""
    import aiohttp
    import yarl

    target = job.target
    bodies, nb = target.bodies, len(target.bodies)
    url = yarl.URL(target.url)
    pc = time.perf_counter
    connector = aiohttp.TCPConnector(limit=job.clients, limit_per_host=job.clients, ttl_dns_cache=None)
    session = aiohttp.ClientSession(
        connector=connector,
        headers=target.headers,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=target.timeout_s),
    )
    post = session.post

    async def send(i: int) -> tuple[float, bytes | None, str]:
        """(sent, reply body or None, failure): the hot path."""
        t = pc()
        try:
            async with post(url, data=bodies[i % nb]) as r:
                raw = await r.read()
                if 200 <= r.status < 300:
                    return t, raw, ""
                return t, None, f"HTTP {r.status}: {_excerpt(raw)}"
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            return t, None, f"{type(err).__name__}: {err}"

    try:
        if job.mode == "closed":
            await _closed(job, stop, start, send, done, out)
        else:
            await _open(job, stop, start, _TaskSender(send, done), out)
    finally:
        await session.close()


async def _until(t: float) -> None:
    d = t - time.perf_counter()
    if d > SPIN_S:
        await asyncio.sleep(d - SPIN_S)
    while time.perf_counter() < t:
        await asyncio.sleep(0)  # yield: replies are read while we wait


async def _closed(job: Job, stop: Any, start: float, send, done, out: _Recorder) -> None:
    stop_at = None if job.requests is None else job.warm + job.requests
    step = job.processes
    state = {"next": job.process, "deadline": math.inf}
    await _until(start)

    async def client() -> None:
        while True:
            i = state["next"]
            if (stop_at is not None and i >= stop_at) or time.perf_counter() >= state["deadline"] or stop.is_set():
                return
            state["next"] = i + step
            sent, raw, failure = await send(i)
            ended = time.perf_counter()
            if i >= job.warm:
                if job.duration_s is not None and state["deadline"] == math.inf:
                    state["deadline"] = sent + job.duration_s
                out.came(sent)
            done(i, sent, sent, ended, raw, failure)

    await asyncio.gather(*(client() for _ in range(job.clients)))
    out.rec.stopped_early = stop.is_set()


def _schedule(job: Job) -> Iterator[float]:
    rate = float(job.rate)  # type: ignore[arg-type]
    counted = arrival_chunks(
        rate, job.arrival, requests=job.requests, duration_s=job.duration_s, burstiness=job.burstiness, seed=job.seed
    )
    return with_warmup(job.warm, rate, counted, job.warm / rate)


class _TaskSender:
    """Open loop's sender on aiohttp: a task per request."""

    def __init__(self, send, done) -> None:
        self.send, self.done = send, done
        self.in_flight = 0
        self.freed = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()

    async def _one(self, i: int, t: float) -> None:
        sent, raw, failure = await self.send(i)
        ended = time.perf_counter()
        self.in_flight -= 1
        self.freed.set()
        self.done(i, t, sent, ended, raw, failure)

    def launch(self, i: int, t: float) -> None:
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._one(i, t))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks)


class _Halt:
    """A stop Event looked at every 50 ms by a task, read as a plain attribute on the hot path."""

    def __init__(self, stop: Any) -> None:
        self.stop, self.seen = stop, False
        self.task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while not self.seen:
            self.seen = self.stop.is_set()
            await asyncio.sleep(0.05)

    def is_set(self) -> bool:
        return self.seen

    def close(self) -> None:
        self.task.cancel()


async def _open(job: Job, stop: Any, start: float, sender, out: _Recorder) -> None:
    """The open-loop dispatcher: each request leaves at its scheduled time through `sender` (launch,
    in_flight, freed, drain), whatever the server does."""
    rec = out.rec
    deadline = None if job.duration_s is None else job.warm / float(job.rate) + duration_deadline(job.duration_s)
    end = math.inf if deadline is None else start + deadline
    cap = job.clients
    freed = sender.freed
    launch = sender.launch

    def cut(rest: Iterable[tuple[int, float]]) -> None:  # past the deadline: counted, never sent
        for j, o in rest:
            if j % job.processes == job.process and j >= job.warm:
                out.came(start + o)
                rec.n_dropped += 1
                rec.n_dropped_at_end += 1

    halt = _Halt(stop)  # the stop flag polled off the hot path (a process-shared Event costs ~2 us a look)
    schedule = enumerate(_schedule(job))
    mine = ((i, o) for i, o in schedule if i % job.processes == job.process)
    behind = 0  # sends in a row made without waiting (the dispatcher is behind its schedule)
    try:
        for i, off in mine:
            t = start + off
            counted = i >= job.warm
            if time.perf_counter() > end:
                cut(itertools.chain([(i, off)], schedule))
                break
            while not halt.is_set() and time.perf_counter() < t - 0.1:
                await asyncio.sleep(0.05)  # long gaps: stay responsive to stop
            if halt.is_set():
                rec.stopped_early = True
                break
            if t > time.perf_counter():
                behind = 0
                await _until(t)
            else:
                behind += 1
                if behind % BURST == 0:
                    await asyncio.sleep(0)  # behind schedule: still let replies be read between sends
            if sender.in_flight >= cap:
                if job.on_cap == "drop":
                    if counted:
                        out.came(t)
                        rec.n_dropped += 1
                    continue
                while sender.in_flight >= cap and not halt.is_set() and time.perf_counter() <= end:
                    freed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(freed.wait(), 0.1)
                if sender.in_flight >= cap:
                    if halt.is_set():
                        rec.stopped_early = True
                    else:
                        cut(itertools.chain([(i, off)], schedule))
                    break
                if counted:
                    rec.n_late += 1
            if counted:
                out.came(t)
            launch(i, t)
    finally:
        halt.close()
        await sender.drain()


# ----- the fast path: plain http:// keep-alive, uvloop's transports, replies parsed by httptools -----
# aiohttp costs ~60 us of CPU per request (its request/response objects, a task and a future each);
# here a request is one pre-encoded bytes write and a reply one httptools feed, and the next request
# of a closed-loop client leaves from the callback that completed the previous one (wrk's design).


def fast_path(target: HttpTarget) -> bool:
    """The rule for which client runs: plain http:// with no user info in the URL and no line breaks in
    header values runs on the fast client; everything else (https: TLS; credentials in the URL) runs on
    aiohttp. Neither uses proxies (aiohttp's trust_env is off): the generator measures the server.
    A target with client="aiohttp" runs on aiohttp whatever its URL."""
    parts = urlsplit(target.url)
    if target.client == "aiohttp":
        return False
    return (
        parts.scheme == "http"
        and parts.username is None
        and parts.password is None
        and bool(parts.hostname)
        and not any(c in f"{k}{v}" for k, v in target.headers.items() for c in "\r\n")
    )


def client_of(target: HttpTarget) -> str:
    """The client that sends `target`'s requests: "fast" or "aiohttp"."""
    return "fast" if fast_path(target) else "aiohttp"


def request_bytes(target: HttpTarget) -> tuple[bytes, ...]:
    """Each body's whole HTTP/1.1 request (keep-alive is HTTP/1.1's default), encoded once."""
    parts = urlsplit(target.url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    skip = {"host", "content-length", "connection", "transfer-encoding"}
    head = f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in target.headers.items() if k.lower() not in skip
    )
    return tuple(f"{head}Content-Length: {len(b)}\r\n\r\n".encode("latin-1") + b for b in target.bodies)


class _Conn(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time. replied(conn, ended, status, body,
    failure) runs when the reply is complete (or the request failed), outside the parser's callbacks."""

    def __init__(self, replied: Callable[..., None]) -> None:
        self.replied = replied
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []
        self.complete = False
        self.keep = True
        self.status = 0
        self.busy = False
        self.open = True
        self.i, self.scheduled, self.sent = -1, 0.0, 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, data: bytes, i: int, scheduled: float | None) -> None:
        self.i, self.busy = i, True
        self.sent = time.perf_counter()
        self.scheduled = self.sent if scheduled is None else scheduled
        self.transport.write(data)  # type: ignore[union-attr]

    # httptools' callbacks (only those defined are called)
    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep = self.parser.should_keep_alive()  # valid here, reset once the call returns
        self.status = self.parser.get_status_code()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self.fail(f"malformed HTTP reply: {type(err).__name__}: {err}")
            return
        if self.complete:
            ended = time.perf_counter()
            self.complete = False
            body = b"".join(self.chunks)
            self.chunks.clear()
            if not self.keep:
                self.close()
            if self.busy:
                self.busy = False
                self.replied(self, ended, self.status, body, "")

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        reason = f"{type(exc).__name__}: {exc}" if exc else "the server closed the connection"
        self.fail(f"ServerDisconnectedError: {reason}")

    def fail(self, failure: str) -> None:
        self.close()
        if self.busy:
            self.busy = False
            self.replied(self, time.perf_counter(), 0, None, failure)

    def close(self) -> None:
        self.open = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class _FastClient:
    """Connections to one http:// host:port, their requests pre-encoded, and a sweeper that times out
    requests past timeout_s and notices a stop (so the hot path never polls a cross-process Event)."""

    def __init__(self, target: HttpTarget, replied: Callable[..., None], stop: Any) -> None:
        parts = urlsplit(target.url)
        self.host, self.port = parts.hostname or "", parts.port or 80
        self.where = f"{parts.hostname}:{self.port}"
        self.requests = request_bytes(target)
        self.timeout_s = target.timeout_s
        self.replied = replied
        self.stop = stop
        self.halt = False
        self.conns: set[_Conn] = set()
        self._sweeper: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()

    async def connect(self) -> _Conn:
        """A new connection (OSError or TimeoutError when the server cannot be reached)."""
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Conn(self.replied), self.host, self.port), self.timeout_s
        )
        self.conns.add(conn)
        return conn

    def refused(self, err: BaseException) -> str:
        return f"ClientConnectorError: cannot connect to {self.where}: {type(err).__name__}: {err}"

    def spawn(self, coro) -> None:
        """A task kept referenced until it ends (the loop holds tasks weakly)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def start_sweeper(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            if not self.halt and self.stop.is_set():
                self.halt = True
            now = time.perf_counter()
            for conn in [c for c in self.conns if not c.open or (c.busy and now - c.sent > self.timeout_s)]:
                if conn.open:
                    conn.fail(f"TimeoutError: no reply within {self.timeout_s:g} s")
                self.conns.discard(conn)

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for conn in list(self.conns):
            conn.close()


async def _closed_fast(job: Job, stop: Any, start: float, done, out: _Recorder) -> None:
    """Closed loop on callbacks: each client is a connection whose reply callback sends its next
    request at once; a client whose connection closed reconnects in a task."""
    loop = asyncio.get_running_loop()
    stop_at = math.inf if job.requests is None else job.warm + job.requests
    step, warm, has_duration = job.processes, job.warm, job.duration_s is not None
    state = {"next": job.process, "deadline": math.inf, "active": job.clients}
    finished = loop.create_future()
    pc = time.perf_counter

    def take() -> int | None:
        i = state["next"]
        if i >= stop_at or client.halt or pc() >= state["deadline"]:
            return None
        state["next"] = i + step
        return i

    def counted(sent: float) -> None:  # a counted request left (the first one starts the duration)
        if has_duration and state["deadline"] == math.inf:
            state["deadline"] = sent + job.duration_s  # type: ignore[operator]
        out.came(sent)

    def end_client() -> None:
        state["active"] -= 1
        if state["active"] == 0 and not finished.done():
            finished.set_result(None)

    def replied(conn: _Conn, ended: float, status: int, raw: bytes | None, failure: str) -> None:
        i, sent = conn.i, conn.sent
        if raw is not None and not 200 <= status < 300:
            raw, failure = None, f"HTTP {status}: {_excerpt(raw)}"
        if i >= warm:
            counted(sent)
        done(i, sent, sent, ended, raw, failure)
        if conn.open:
            nxt = take()
            if nxt is None:
                end_client()
            else:
                conn.send(requests[nxt % nr], nxt, None)
        else:
            client.conns.discard(conn)
            client.spawn(run_client(None))

    async def run_client(conn: _Conn | None) -> None:
        """Send this client's next request, connecting first when it has no connection."""
        while True:
            i = take()
            if i is None:
                end_client()
                return
            if conn is not None and conn.open:
                conn.send(requests[i % nr], i, None)
                return
            t = pc()
            try:
                conn = await client.connect()
            except (OSError, TimeoutError) as err:  # counted like any failed request
                ended = pc()
                if i >= warm:
                    counted(t)
                done(i, t, t, ended, None, client.refused(err))
                conn = None
                continue
            conn.send(requests[i % nr], i, None)
            return

    client = _FastClient(job.target, replied, stop)
    requests, nr = client.requests, len(client.requests)
    conns: list[_Conn | None] = []
    for _ in range(job.clients):  # connected before the start: no handshake inside the measurement
        try:
            conns.append(await client.connect())
        except (OSError, TimeoutError):
            conns.append(None)  # run_client connects again, counting the failure
    client.start_sweeper()
    try:
        await _until(start)
        for conn in conns:
            await run_client(conn)
        await finished
    finally:
        await client.aclose()
    out.rec.stopped_early = stop.is_set()


class _ConnSender:
    """Open loop's sender on the fast client: an idle-connection stack (a new connection when none is
    idle), the replies recorded by callback."""

    def __init__(self, job: Job, stop: Any, done) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = _FastClient(job.target, self.replied, stop)
        self.requests, self.nr = self.client.requests, len(self.client.requests)
        self.done = done
        self.idle: list[_Conn] = []
        self.in_flight = 0
        self.freed = asyncio.Event()
        self.drained: asyncio.Future | None = None

    async def prepare(self, n: int) -> None:
        for _ in range(n):
            with contextlib.suppress(OSError, TimeoutError):
                self.idle.append(await self.client.connect())
        self.client.start_sweeper()

    def replied(self, conn: _Conn, ended: float, status: int, raw: bytes | None, failure: str) -> None:
        if raw is not None and not 200 <= status < 300:
            raw, failure = None, f"HTTP {status}: {_excerpt(raw)}"
        self._freed(conn if conn.open else None)
        self.done(conn.i, conn.scheduled, conn.sent, ended, raw, failure)

    def _freed(self, conn: _Conn | None) -> None:
        self.in_flight -= 1
        if conn is not None:
            self.idle.append(conn)
        self.freed.set()
        if self.in_flight == 0 and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def launch(self, i: int, t: float) -> None:
        self.in_flight += 1
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.open:
                conn.send(self.requests[i % self.nr], i, t)
                return
        self.client.spawn(self._connect_and_send(i, t))

    async def _connect_and_send(self, i: int, t: float) -> None:
        sent = time.perf_counter()
        try:
            conn = await self.client.connect()
        except (OSError, TimeoutError) as err:
            self._freed(None)
            self.done(i, t, sent, time.perf_counter(), None, self.client.refused(err))
            return
        conn.send(self.requests[i % self.nr], i, t)

    async def drain(self) -> None:
        if self.in_flight:
            self.drained = self.loop.create_future()
            await self.drained
        await self.client.aclose()


def run_job(job: Job, stop: Any = None) -> Part:
    """One process's share, on a fresh event loop in this thread."""
    import gc

    stop = stop if stop is not None else threading.Event()
    # The cyclic GC's full collections walk every live object: in a process holding torch and a
    # tokenizer that is a pause of milliseconds in the middle of the measurement. What exists
    # before the run is frozen out of collection for its length.
    gc.collect()
    gc.freeze()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_run(job, stop))
    finally:
        gc.unfreeze()


def _child(job: Job, conn: Any, stop: Any) -> None:  # a generator process (spawned)
    import signal

    # Ctrl-C reaches the whole process group: the parent decides, and stops its children through `stop`
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conn.send("ready")
        start = conn.recv()
        conn.send(("ok", run_job(replace(job, start=start), stop)))
    except BaseException as err:  # reported to the parent, which raises it as an engine failure
        conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


def run_parts(job: Job, processes: int, stop: threading.Event | None = None) -> list[Part]:
    """Run `job` split over `processes` generator processes (1: in this thread), with one start time."""
    stop = stop or threading.Event()
    if processes <= 1:
        return [run_job(job, stop)]
    ctx = multiprocessing.get_context("spawn")  # never fork a process holding torch's thread pools
    child_stop = ctx.Event()
    share = [job.clients // processes + (1 if k < job.clients % processes else 0) for k in range(processes)]
    procs, conns = [], []
    for k in range(processes):
        parent, child = ctx.Pipe()
        j = replace(job, process=k, processes=processes, clients=max(1, share[k]))
        p = ctx.Process(target=_child, args=(j, child, child_stop), daemon=True)
        p.start()
        child.close()
        procs.append(p)
        conns.append(parent)
    watcher_done = threading.Event()

    def watch() -> None:  # a stop of this process reaches the children
        while not watcher_done.wait(0.05):
            if stop.is_set():
                child_stop.set()
                return

    threading.Thread(target=watch, daemon=True).start()
    try:
        for c in conns:
            if not c.poll(SPAWN_TIMEOUT_S):
                raise EngineError(f"perf: a generator process did not start within {SPAWN_TIMEOUT_S:g} s")
            c.recv()
        start = time.perf_counter() + LEAD_IN_S
        for c in conns:
            c.send(start)
        parts = []
        for c in conns:
            status, value = c.recv()
            if status != "ok":
                raise EngineError(f"perf: a generator process failed: {value}")
            parts.append(value)
        return parts
    except (EOFError, OSError) as err:  # a child died without a word (killed, out of memory)
        raise EngineError(f"perf: a generator process exited during the trial ({type(err).__name__})") from None
    finally:
        watcher_done.set()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for c in conns:
            c.close()


def merged_records(parts: Sequence[Part]) -> OpenLoopRecords:
    """The records of all processes as one run's (schedule order)."""
    recs = [p.rec for p in parts]
    index = np.concatenate([r.index for r in recs])
    order = np.argsort(index, kind="stable")

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in recs])[order]

    def nan_pick(values: list[float], pick) -> float:
        vals = [v for v in values if not math.isnan(v)]
        return pick(vals) if vals else math.nan

    return OpenLoopRecords(
        index=index[order],
        scheduled=cat("scheduled"),
        sent=cat("sent"),
        ended=cat("ended"),
        server_timing_ms={},
        n_scheduled=sum(r.n_scheduled for r in recs),
        n_failed=sum(r.n_failed for r in recs),
        n_dropped=sum(r.n_dropped for r in recs),
        n_late=sum(r.n_late for r in recs),
        n_dropped_at_end=sum(r.n_dropped_at_end for r in recs),
        first_scheduled=nan_pick([r.first_scheduled for r in recs if r.n_scheduled], min),
        last_scheduled=nan_pick([r.last_scheduled for r in recs if r.n_scheduled], max),
        last_ended=nan_pick([r.last_ended for r in recs], max),
        errors=[e for r in recs for e in r.errors][:5],
        stopped_early=any(r.stopped_early for r in recs),
    )


def merged_histogram(parts: Sequence[Part]):
    """The latency HdrHistogram of the whole run: the processes' histograms added (exact)."""
    return histogram.merged(histogram.decode(p.hist) for p in parts)
