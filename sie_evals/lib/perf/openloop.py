"""Open-loop load: requests leave on a seeded arrival schedule whatever the server does, so a slow
server faces a growing queue instead of a politely waiting client (no coordinated omission).

Latency is measured from each request's SCHEDULED send time (wrk2's rule); the service time from the
actual send is kept beside it, and so is the send lag (actual - scheduled). At most max_concurrency
requests are in flight: when the cap is full at a request's scheduled time, the request is either sent
as soon as a slot frees and counted `late` (its latency still runs from the schedule), or, with
on_cap="drop", not sent and counted `dropped` (k6's dropped iterations). Nothing is silently delayed."""

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ARRIVALS = ("constant", "poisson", "gamma")
CAP_POLICIES = ("late", "drop")
LEAD_IN_S = 0.05  # first send this long after the dispatcher starts, so it is not late by construction
SPIN_S = 0.0002  # sleep to this close to a send time, then spin: sleep alone wakes too late on a loaded VM


def arrival_schedule(
    rate: float,
    arrival: str,
    *,
    requests: int | None = None,
    duration_s: float | None = None,
    burstiness: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Send offsets in seconds from the start (first at 0), for `requests` requests or all that fall
    within `duration_s`. constant: every 1/rate; poisson: exponential gaps of mean 1/rate; gamma: gamma
    gaps of mean 1/rate and shape `burstiness` (vLLM's convention: < 1 burstier than Poisson, 1 is
    Poisson, > 1 smoother). The same seed gives the same schedule."""
    if rate <= 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be > 0, got {rate}")
    if arrival not in ARRIVALS:
        raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r}")
    if (requests is None) == (duration_s is None):
        raise ValueError("give exactly one of requests or duration_s")
    rng = np.random.default_rng(seed)
    mean_gap = 1.0 / rate
    expected = (duration_s or 0.0) * rate
    n = requests if requests is not None else int(expected * 1.5 + 10 * math.sqrt(expected) + 10)

    def gaps(k: int) -> np.ndarray:
        if arrival == "constant":
            return np.full(k, mean_gap)
        if arrival == "poisson":
            return rng.exponential(mean_gap, k)
        return rng.gamma(burstiness, mean_gap / burstiness, k)

    offsets = np.concatenate([[0.0], np.cumsum(gaps(n - 1))]) if n > 1 else np.zeros(1)
    if duration_s is not None:
        while offsets[-1] < duration_s:  # a rare short draw: extend, same generator
            offsets = np.concatenate([offsets, offsets[-1] + np.cumsum(gaps(n))])
        offsets = offsets[offsets < duration_s]
    return offsets


def schedule_for_rate_curve(
    times_s: np.ndarray, rates: np.ndarray, arrival: str, *, burstiness: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Send offsets for a rate that changes over time (a ramp, steps): rates[k] requests/s holds from
    times_s[k] to times_s[k + 1] (the last entry ends the curve). The arrivals of a unit-rate process
    (constant, Poisson or gamma gaps of mean 1) are mapped through the inverse of the cumulative rate
    curve: the time-change construction of a non-homogeneous process."""
    if arrival not in ARRIVALS:
        raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r}")
    times_s, rates = np.asarray(times_s, dtype=float), np.asarray(rates, dtype=float)
    cumulative = np.concatenate([[0.0], np.cumsum(np.diff(times_s) * rates[:-1])])
    total = cumulative[-1]
    if total <= 0:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    n = int(total * 1.5 + 10 * math.sqrt(total) + 10)
    if arrival == "constant":
        unit = np.arange(n, dtype=float)
    else:
        gaps = rng.exponential(1.0, n - 1) if arrival == "poisson" else rng.gamma(burstiness, 1 / burstiness, n - 1)
        unit = np.concatenate([[0.0], np.cumsum(gaps)])
    unit = unit[unit < total]
    return np.interp(unit, cumulative, times_s)


@dataclass
class OpenLoopRecords:
    """Per scheduled request (index = schedule position), perf_counter seconds; NaN when never sent."""

    scheduled: np.ndarray
    sent: np.ndarray
    ended: np.ndarray
    ok: np.ndarray  # bool
    late: np.ndarray  # bool: waited for an in-flight slot
    dropped: np.ndarray  # bool
    timings: list[dict | None]
    errors: list[str]
    stopped_early: bool


class _Worker:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.item: int | None = None
        self.thread: threading.Thread


def _sleep_until(t: float) -> None:
    d = t - time.perf_counter()
    if d > SPIN_S:
        time.sleep(d - SPIN_S)
    while time.perf_counter() < t:
        pass


def run_schedule(
    send: Callable[[int], Any],
    offsets: np.ndarray,
    max_concurrency: int,
    on_cap: str = "late",
    stop: threading.Event | None = None,
    on_done: Callable[[int, float, float, float, bool], None] | None = None,
) -> OpenLoopRecords:
    """Send request i (send(i) does the work, raises on failure, may return server timing) at
    start + offsets[i]. Worker threads are created as needed, up to max_concurrency, each keeping its
    own connection (engines keep one per thread). `stop` ends the run early: what ran is returned.
    on_done(i, scheduled, sent, ended, ok) is called from the worker after each request (live display)."""
    if on_cap not in CAP_POLICIES:
        raise ValueError(f"on_cap must be one of {CAP_POLICIES}, got {on_cap!r}")
    n = len(offsets)
    scheduled = np.full(n, np.nan)
    sent = np.full(n, np.nan)
    ended = np.full(n, np.nan)
    ok = np.zeros(n, dtype=bool)
    late = np.zeros(n, dtype=bool)
    dropped = np.zeros(n, dtype=bool)
    timings: list[dict | None] = [None] * n
    errors: list[str] = []
    stop = stop or threading.Event()
    slots = threading.Semaphore(max_concurrency)
    lock = threading.Lock()
    idle: list[_Worker] = []  # a worker puts itself back here before it frees its slot
    workers: list[_Worker] = []

    def work(w: _Worker) -> None:
        while True:
            w.ready.wait()
            w.ready.clear()
            i = w.item
            if i is None:
                return
            t_send = time.perf_counter()
            sent[i] = t_send
            try:
                reply = send(i)
                timings[i] = reply if isinstance(reply, dict) else None
                ok[i] = True
            except Exception as err:  # a failure of the system under test is an error, not a crash
                errors.append(f"{type(err).__name__}: {err}")
            ended[i] = time.perf_counter()
            with lock:
                idle.append(w)
            slots.release()
            if on_done is not None:
                on_done(i, scheduled[i], t_send, ended[i], bool(ok[i]))

    def hand_over(i: int) -> None:
        with lock:
            w = idle.pop() if idle else None  # LIFO: the most recently used connection
        if w is None:
            w = _Worker()
            w.thread = threading.Thread(target=work, args=(w,), daemon=True)
            workers.append(w)
            w.thread.start()
        w.item = i
        w.ready.set()

    start = time.perf_counter() + LEAD_IN_S
    stopped_early = False
    for i in range(n):
        t = start + offsets[i]
        while not stop.is_set() and time.perf_counter() < t - 0.1:
            stop.wait(max(0.0, min(0.1, t - 0.1 - time.perf_counter())))  # long gaps: stay responsive to stop
        if stop.is_set():
            stopped_early = True
            break
        _sleep_until(t)
        scheduled[i] = t
        if not slots.acquire(blocking=False):
            if on_cap == "drop":
                dropped[i] = True
                continue
            late[i] = True
            while not slots.acquire(timeout=0.1):
                if stop.is_set():
                    break
            else:
                hand_over(i)
                continue
            stopped_early = True  # stopped while waiting for a slot: this one was never sent
            late[i] = False
            scheduled[i] = np.nan
            break
        hand_over(i)
    for _ in range(max_concurrency):  # every in-flight request finishes (engines time out on their own)
        slots.acquire()
    for w in workers:
        w.item = None
        w.ready.set()
        w.thread.join()
    return OpenLoopRecords(scheduled, sent, ended, ok, late, dropped, timings, errors, stopped_early)


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
