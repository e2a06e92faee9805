"""The fast generator for HTTP servers: aiohttp on an event loop (uvloop when installed), keep-alive
connection pools, every request body encoded before the run, and nothing on the hot path but
send, receive and two perf_counter stamps. When one core is not enough (high rates, many clients)
the load is split over several generator processes that share one start time and one schedule;
each keeps its own records and HdrHistogram, and the parent merges them exactly (histogram.merged).

The semantics are load.py's and openloop.py's: closed loop (each client sends the next request when
its reply came), open loop (latency from the scheduled send time, in-flight cap with `late` or
`drop`, a deadline after which nothing is sent). Request i sends bodies[i % len(bodies)]. Every
reply's status is checked (not 2xx: a failed request, no retry, as in wrk and k6); the bodies of the
first SAMPLES successful replies of each process are returned so the engine can validate them after
the run (parsing every reply would be generator work inside the measurement)."""

import asyncio
import contextlib
import itertools
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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
# Spin (yield to the loop until the send time) only this close to a send. 0: the loop's millisecond
# timers alone, sends up to ~1 ms late. Spinning sends on time on an idle machine, but on a shared one
# (load average 8 on 2 cores) a spinning process is preempted for whole time slices: measured p99 at
# 1,000 req/s against nginx 9-12 ms without spinning, 15-170 ms with 1 ms of it.
SPIN_S = 0.0
# What one generator process sustains against a fast server on one core (~10k req/s measured with
# nginx on 127.0.0.1, benchmarks/RESULTS.md), with headroom: above it the load is split.
RATE_PER_PROCESS = 4000.0
CLIENTS_PER_PROCESS = 64
BURST = 16  # a dispatcher behind its schedule yields to the loop after this many sends
SPAWN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class HttpTarget:
    """What a perf run sends: POST url with these headers; request i carries bodies[i % len(bodies)]."""

    url: str
    headers: dict[str, str]
    bodies: tuple[bytes, ...]
    timeout_s: float = 60.0


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


@dataclass
class Part:
    """What one process measured: records of its successful counted requests (closed loop:
    scheduled == sent), its latency HdrHistogram (encoded) and sample reply bodies."""

    rec: OpenLoopRecords
    hist: str
    samples: list[tuple[int, bytes]] = field(default_factory=list)


def processes_for(mode: str, clients: int, rate: float | None, cpus: int | None = None) -> int:
    """How many generator processes a load needs: one per RATE_PER_PROCESS requests/s offered (open
    loop) or per CLIENTS_PER_PROCESS clients (closed loop), never more than the CPUs."""
    cpus = cpus or os.cpu_count() or 1
    need = math.ceil(rate / RATE_PER_PROCESS) if mode == "open" and rate else math.ceil(clients / CLIENTS_PER_PROCESS)
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
    import aiohttp
    import yarl

    target = job.target
    bodies, nb = target.bodies, len(target.bodies)
    url = yarl.URL(target.url)
    out = _Recorder()
    rec = out.rec
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

    start = job.start if job.start is not None else pc() + LEAD_IN_S
    try:
        if job.mode == "closed":
            await _closed(job, stop, start, send, done, out)
        else:
            await _open(job, stop, start, send, done, out)
    finally:
        await session.close()
    return out.part()


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


async def _open(job: Job, stop: Any, start: float, send, done, out: _Recorder) -> None:
    rec = out.rec
    loop = asyncio.get_running_loop()
    deadline = None if job.duration_s is None else job.warm / float(job.rate) + duration_deadline(job.duration_s)
    end = math.inf if deadline is None else start + deadline
    cap = job.clients
    in_flight = 0
    freed = asyncio.Event()
    tasks: set[asyncio.Task] = set()

    async def one(i: int, t: float) -> None:
        nonlocal in_flight
        sent, raw, failure = await send(i)
        ended = time.perf_counter()
        in_flight -= 1
        freed.set()
        done(i, t, sent, ended, raw, failure)

    def launch(i: int, t: float) -> None:
        nonlocal in_flight
        in_flight += 1
        task = loop.create_task(one(i, t))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def cut(rest: Iterable[tuple[int, float]]) -> None:  # past the deadline: counted, never sent
        for j, o in rest:
            if j % job.processes == job.process and j >= job.warm:
                out.came(start + o)
                rec.n_dropped += 1
                rec.n_dropped_at_end += 1

    schedule = enumerate(_schedule(job))
    mine = ((i, o) for i, o in schedule if i % job.processes == job.process)
    behind = 0  # sends in a row made without waiting (the dispatcher is behind its schedule)
    for i, off in mine:
        t = start + off
        counted = i >= job.warm
        if time.perf_counter() > end:
            cut(itertools.chain([(i, off)], schedule))
            break
        while not stop.is_set() and time.perf_counter() < t - 0.1:
            await asyncio.sleep(0.05)  # long gaps: stay responsive to stop
        if stop.is_set():
            rec.stopped_early = True
            break
        if t > time.perf_counter():
            behind = 0
            await _until(t)
        else:
            behind += 1
            if behind % BURST == 0:
                await asyncio.sleep(0)  # behind schedule: still let replies be read between sends
        if in_flight >= cap:
            if job.on_cap == "drop":
                if counted:
                    out.came(t)
                    rec.n_dropped += 1
                continue
            while in_flight >= cap and not stop.is_set() and time.perf_counter() <= end:
                freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(freed.wait(), 0.1)
            if in_flight >= cap:
                if stop.is_set():
                    rec.stopped_early = True
                else:
                    cut(itertools.chain([(i, off)], schedule))
                break
            if counted:
                rec.n_late += 1
        if counted:
            out.came(t)
        launch(i, t)
    if tasks:
        await asyncio.gather(*tasks)


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
