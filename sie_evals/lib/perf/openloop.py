"""Open-loop load: requests leave on a seeded arrival schedule whatever the server does, so a slow
server faces a growing queue instead of a politely waiting client (no coordinated omission).

Latency is measured from each request's SCHEDULED send time (wrk2's rule); the service time from the
actual send is kept beside it, and so is the send lag (actual - scheduled). At most max_concurrency
requests are in flight: when the cap is full at a request's scheduled time, the request is either sent
as soon as a slot frees and counted `late` (its latency still runs from the schedule), or, with
on_cap="drop", not sent and counted `dropped` (k6's dropped iterations). Nothing is silently delayed.
A run with a deadline (a trial of a set duration) sends nothing after it: requests still due then
(the cap stayed full, or the dispatcher fell behind) are counted dropped and `dropped_at_end`, so an
overloaded or dead server cannot stretch a 2 s trial at a high rate into hours of late sends.

Memory does not grow with rate x duration: the schedule is generated lazily in chunks, and the run
keeps one compact row per successful counted request (its latency is the measurement) and only
counters for the rest (dropped, failed, late)."""

import array
import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ARRIVALS = ("constant", "poisson", "gamma")
CAP_POLICIES = ("late", "drop")
LEAD_IN_S = 0.05  # first send this long after the dispatcher starts, so it is not late by construction
SPIN_S = 0.0002  # sleep to this close to a send time, then spin: sleep alone wakes too late on a loaded VM
CHUNK = 4096  # offsets generated at a time: small enough that drawing one never stalls the dispatcher
ERROR_SAMPLES = 5  # error messages kept (every failure is counted)


def _gap_sampler(arrival: str, mean_gap: float, burstiness: float, rng: np.random.Generator):
    if arrival == "constant":
        return lambda k: np.full(k, mean_gap)
    if arrival == "poisson":
        return lambda k: rng.exponential(mean_gap, k)
    return lambda k: rng.gamma(burstiness, mean_gap / burstiness, k)


def _check_arrival(arrival: str) -> None:
    if arrival not in ARRIVALS:
        raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r}")


def _cumulative_chunks(gaps: Callable[[int], np.ndarray], requests: int | None) -> Iterator[np.ndarray]:
    """Offsets 0, g1, g1+g2, ... in chunks; `requests` of them, or without end. Each chunk's cumsum
    starts from the previous offset, so the additions (and the draws) are exactly those of one cumsum
    over the whole schedule."""
    left = requests
    k = CHUNK if left is None else min(CHUNK, left)
    if k < 1:
        return
    offs = np.cumsum(np.concatenate([[0.0], gaps(k - 1)]))
    while True:
        yield offs
        if left is not None:
            left -= len(offs)
        k = CHUNK if left is None else min(CHUNK, left)
        if k < 1:
            return
        offs = np.cumsum(np.concatenate([[offs[-1]], gaps(k)]))[1:]


def arrival_chunks(
    rate: float,
    arrival: str,
    *,
    requests: int | None = None,
    duration_s: float | None = None,
    burstiness: float = 1.0,
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """Send offsets in seconds from the start (first at 0), in chunks, for `requests` requests or all
    that fall within `duration_s`. constant: every 1/rate; poisson: exponential gaps of mean 1/rate;
    gamma: gamma gaps of mean 1/rate and shape `burstiness` (vLLM's convention: < 1 burstier than
    Poisson, 1 is Poisson, > 1 smoother). The same seed gives the same schedule."""
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be > 0, got {rate}")
    _check_arrival(arrival)
    if (requests is None) == (duration_s is None):
        raise ValueError("give exactly one of requests or duration_s")
    if duration_s is not None and not math.isfinite(duration_s):
        raise ValueError(f"duration_s must be finite, got {duration_s}")
    gaps = _gap_sampler(arrival, 1.0 / rate, burstiness, np.random.default_rng(seed))
    for offs in _cumulative_chunks(gaps, requests):
        if duration_s is not None and offs[-1] >= duration_s:  # offsets only grow: this is the last chunk
            yield offs[offs < duration_s]
            return
        yield offs


def arrival_schedule(rate: float, arrival: str, **kwargs: Any) -> np.ndarray:
    """The whole schedule of arrival_chunks as one array (small schedules: tests, benchmarks)."""
    return np.concatenate([np.zeros(0), *arrival_chunks(rate, arrival, **kwargs)])


def rate_curve_chunks(
    times_s: np.ndarray, rates: np.ndarray, arrival: str, *, burstiness: float = 1.0, seed: int = 0
) -> Iterator[np.ndarray]:
    """Send offsets, in chunks, for a rate that changes over time (a ramp, steps): rates[k] requests/s
    holds from times_s[k] to times_s[k + 1] (the last entry ends the curve). The arrivals of a
    unit-rate process (constant, Poisson or gamma gaps of mean 1) are mapped through the inverse of
    the cumulative rate curve: the time-change construction of a non-homogeneous process."""
    _check_arrival(arrival)
    times_s, rates = np.asarray(times_s, dtype=float), np.asarray(rates, dtype=float)
    cumulative = np.concatenate([[0.0], np.cumsum(np.diff(times_s) * rates[:-1])])
    total = cumulative[-1]
    if not math.isfinite(total):
        raise ValueError(f"the rate curve must be finite, got {total} requests in all")
    if total <= 0:
        return
    rng = np.random.default_rng(seed)
    if arrival == "constant":
        unit: Iterator[np.ndarray] = (np.arange(k, k + CHUNK, dtype=float) for k in itertools.count(0, CHUNK))
    else:
        unit = _cumulative_chunks(_gap_sampler(arrival, 1.0, burstiness, rng), None)
    for u in unit:
        last = u[-1] >= total
        u = u[u < total]
        if len(u):
            yield np.interp(u, cumulative, times_s)
        if last:
            return


def schedule_for_rate_curve(times_s: np.ndarray, rates: np.ndarray, arrival: str, **kwargs: Any) -> np.ndarray:
    """The whole schedule of rate_curve_chunks as one array (small schedules: tests)."""
    return np.concatenate([np.zeros(0), *rate_curve_chunks(times_s, rates, arrival, **kwargs)])


def duration_deadline(duration_s: float) -> float:
    """When a trial of duration_s stops sending: late requests get a grace of 10% (at least 1 s) to
    find a slot, so a briefly full cap near the end still shows as late sends, not as drops."""
    return duration_s + max(1.0, 0.1 * duration_s)


def with_warmup(warm: int, warm_rate: float, counted: Iterable[np.ndarray], shift_s: float) -> Iterator[float]:
    """`warm` warm-up offsets at a constant warm_rate (k / warm_rate), then the counted schedule
    shifted by shift_s: one lazy schedule for run_schedule(first_counted=warm)."""
    yield from (k / warm_rate for k in range(warm))
    for c in counted:
        yield from (c + shift_s).tolist()


@dataclass
class OpenLoopRecords:
    """What one open-loop run did with its counted requests (schedule positions >= first_counted).

    One row per successful counted request, in schedule order, perf_counter seconds: its position,
    scheduled and actual send, end, and the server's own timings (only the keys every such request
    reported, as {name: array}). Everything else is counted: requests whose time came (sent or
    dropped), failed, dropped, sent late; the first and last scheduled time and the last end of a
    counted request (NaN when none)."""

    index: np.ndarray
    scheduled: np.ndarray
    sent: np.ndarray
    ended: np.ndarray
    server_timing_ms: dict[str, np.ndarray]
    n_scheduled: int = 0
    n_failed: int = 0
    n_dropped: int = 0
    n_late: int = 0
    n_dropped_at_end: int = 0  # of n_dropped: due, never sent, when the deadline passed
    first_scheduled: float = math.nan
    last_scheduled: float = math.nan
    last_ended: float = math.nan
    errors: list[str] = field(default_factory=list)  # the first ERROR_SAMPLES messages
    stopped_early: bool = False


class _Rows:
    """Growable compact columns (8 bytes a value) of the successful counted requests. Appended by the
    worker threads under the run's lock."""

    def __init__(self) -> None:
        self.index = array.array("q")
        self.scheduled = array.array("d")
        self.sent = array.array("d")
        self.ended = array.array("d")
        self.timing: dict[str, array.array] | None = None  # None until the first reply; {} = none common

    def add(self, i: int, scheduled: float, sent: float, ended: float, reply: Any) -> None:
        self.index.append(i)
        self.scheduled.append(scheduled)
        self.sent.append(sent)
        self.ended.append(ended)
        values: dict[str, float] = {}
        if isinstance(reply, dict):
            for k, v in reply.items():
                with contextlib.suppress(TypeError, ValueError):  # not a number: not a comparable timing
                    values[k] = float(v)
        if self.timing is None:  # the first reply
            self.timing = {k: array.array("d", [v]) for k, v in values.items()}
            return
        for k in [k for k in self.timing if k not in values]:  # keep the keys every request reported
            del self.timing[k]
        for k, col in self.timing.items():
            col.append(values[k])

    def sorted_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        index = np.frombuffer(self.index, dtype=np.int64) if len(self.index) else np.zeros(0, dtype=np.int64)
        order = np.argsort(index, kind="stable")  # completion order -> schedule order

        def col(a: array.array) -> np.ndarray:
            return np.frombuffer(a, dtype=np.float64)[order] if len(a) else np.zeros(0)

        timing = {k: col(v) for k, v in (self.timing or {}).items()}
        return index[order], col(self.scheduled), col(self.sent), col(self.ended), timing


class _Worker:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.item: tuple[int, float, bool] | None = None  # schedule position, scheduled time, counted
        self.thread: threading.Thread


def _sleep_until(t: float) -> None:
    d = t - time.perf_counter()
    if d > SPIN_S:
        time.sleep(d - SPIN_S)
    while time.perf_counter() < t:
        pass


def run_schedule(
    send: Callable[[int], Any],
    offsets: Iterable[float],
    max_concurrency: int,
    on_cap: str = "late",
    stop: threading.Event | None = None,
    on_done: Callable[[int, float, float, float, bool], None] | None = None,
    first_counted: int = 0,
    deadline_s: float | None = None,
) -> OpenLoopRecords:
    """Send request i (send(i) does the work, raises on failure, may return server timing) at
    start + offsets[i]; `offsets` may be a lazy iterator (it is read once, in order). Requests before
    position first_counted are warm-up: sent, never recorded. Worker threads are created as needed,
    up to max_concurrency, each keeping its own connection (engines keep one per thread). `stop` ends
    the run early: what ran is returned. on_done(i, scheduled, sent, ended, ok) is called from the
    worker after each request (live display). After start + deadline_s nothing more is sent: the
    requests left in the schedule are counted dropped (and dropped_at_end)."""
    if on_cap not in CAP_POLICIES:
        raise ValueError(f"on_cap must be one of {CAP_POLICIES}, got {on_cap!r}")
    rows = _Rows()
    rec = OpenLoopRecords(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), np.zeros(0), {})
    stop = stop or threading.Event()
    slots = threading.Semaphore(max_concurrency)
    lock = threading.Lock()
    idle: list[_Worker] = []  # a worker puts itself back here before it frees its slot
    workers: list[_Worker] = []

    def work(w: _Worker) -> None:
        while True:
            w.ready.wait()
            w.ready.clear()
            if w.item is None:
                return
            i, scheduled, counted = w.item
            t_send = time.perf_counter()
            reply, ok = None, False
            try:
                reply = send(i)
                ok = True
            except Exception as err:  # a failure of the system under test is an error, not a crash
                message = f"{type(err).__name__}: {err}"
            t_end = time.perf_counter()
            with lock:
                if counted:
                    if ok:
                        rows.add(i, scheduled, t_send, t_end, reply)
                    else:
                        rec.n_failed += 1
                    if not t_end <= rec.last_ended:  # NaN at first
                        rec.last_ended = t_end
                if not ok and len(rec.errors) < ERROR_SAMPLES:
                    rec.errors.append(message)
                idle.append(w)
            slots.release()
            if on_done is not None:
                on_done(i, scheduled, t_send, t_end, ok)

    def hand_over(i: int, t: float, counted: bool) -> None:
        with lock:
            w = idle.pop() if idle else None  # LIFO: the most recently used connection
        if w is None:
            w = _Worker()
            w.thread = threading.Thread(target=work, args=(w,), daemon=True)
            workers.append(w)
            w.thread.start()
        w.item = (i, t, counted)
        w.ready.set()

    def came(t: float) -> None:  # a counted request's time came: sent, late or dropped
        if rec.n_scheduled == 0:
            rec.first_scheduled = t
        rec.last_scheduled = t
        rec.n_scheduled += 1

    def cut(rest: Iterator[tuple[int, float]]) -> None:  # past the deadline: count, never send
        for j, o in rest:
            if j >= first_counted:
                came(start + o)
                rec.n_dropped += 1
                rec.n_dropped_at_end += 1

    start = time.perf_counter() + LEAD_IN_S
    end = math.inf if deadline_s is None else start + deadline_s
    schedule = enumerate(offsets)
    for i, off in schedule:
        t = start + off
        if time.perf_counter() > end:
            cut(itertools.chain([(i, off)], schedule))
            break
        while not stop.is_set() and time.perf_counter() < t - 0.1:
            stop.wait(max(0.0, min(0.1, t - 0.1 - time.perf_counter())))  # long gaps: stay responsive to stop
        if stop.is_set():
            rec.stopped_early = True
            break
        _sleep_until(t)
        counted = i >= first_counted
        if not slots.acquire(blocking=False):
            if on_cap == "drop":
                if counted:
                    came(t)
                    rec.n_dropped += 1
                continue
            while not slots.acquire(timeout=0.1):
                if stop.is_set() or time.perf_counter() > end:
                    break
            else:
                if counted:
                    came(t)
                    rec.n_late += 1
                hand_over(i, t, counted)
                continue
            if stop.is_set():
                rec.stopped_early = True  # stopped while waiting for a slot: this one was never sent
            else:
                cut(itertools.chain([(i, off)], schedule))
            break
        if counted:
            came(t)
        hand_over(i, t, counted)
    for _ in range(max_concurrency):  # every in-flight request finishes (engines time out on their own)
        slots.acquire()
    for w in workers:
        w.item = None
        w.ready.set()
        w.thread.join()
    rec.index, rec.scheduled, rec.sent, rec.ended, rec.server_timing_ms = rows.sorted_columns()
    return rec


def fifo_response_times(arrivals: Sequence[float], service_s: float) -> np.ndarray:
    """Exact response times of a one-server FIFO queue with a fixed service time for these arrival
    times (Lindley's recursion: each departure = max(arrival, previous departure) + service)."""
    a = np.sort(np.asarray(arrivals, dtype=float))
    out = np.empty(len(a))
    prev = -math.inf
    for i, t in enumerate(a):
        prev = max(t, prev) + service_s
        out[i] = prev - t
    return out


def md1_mean_response(service_s: float, rho: float) -> float:
    """The textbook M/D/1 mean response time (Pollaczek-Khinchine): s * (1 + rho / (2 (1 - rho)))."""
    return service_s * (1.0 + rho / (2.0 * (1.0 - rho)))
