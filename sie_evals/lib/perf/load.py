"""Perf evals: a closed-loop or open-loop load generator with latency percentiles and throughput.

Closed loop (the default): C client threads each send a request of B items, wait for the reply, and
send the next, until the run's request budget (or duration) is spent; warm-up requests come first and are not counted.
Request i always carries the same texts (drawn in order from the workload, wrapping around), so a
run is repeatable. Tokens are counted once per text with the model's own tokenizer (truncated at
the profile's max_seq_length, special tokens included): the same rule for every engine.
Open loop (LoadSpec.rate set): requests leave on a seeded arrival schedule (openloop.py) and latency
runs from each request's scheduled send time. Latency percentiles, min, max and mean come from an
HdrHistogram of every counted request (histogram.py), kept encoded in the report.
Two generators with these semantics: HTTP engines whose request is one JSON POST get the fast one
(aio.py: aiohttp, bodies encoded before the run, several processes when the load needs them); any
other engine is called through `send` on threads (run_trial, run_open_trial)."""

import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sie_evals.lib.core import metric_names
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.perf import aio, histogram
from sie_evals.lib.perf.limits import duration_problem, in_flight_problem, rate_problem
from sie_evals.lib.perf.openloop import (
    ARRIVALS,
    CAP_POLICIES,
    OpenLoopRecords,
    arrival_chunks,
    duration_deadline,
    run_schedule,
    with_warmup,
)

# What --save-targets stores for perf and --check-targets gates on (kept importable from here).
PERF_TARGET_METRICS = metric_names.PERF_TARGET_METRICS


class LoadSpecError(InputError, ValueError):
    """An invalid load shape; the message names the field (exit 2)."""


@dataclass(frozen=True)
class LoadSpec:
    batch_size: int = 1
    concurrency: int = 16  # closed loop: clients
    requests: int | None = 200  # per trial; or set duration_s
    duration_s: float | None = None
    warmup_requests: int = 16
    trials: int = 3
    # Open loop: a target rate (requests/s) switches it on.
    rate: float | None = None
    arrival: str = "poisson"
    burstiness: float = 1.0  # gamma shape (1 = Poisson)
    max_concurrency: int = 256  # open loop: in-flight cap
    on_cap: str = "late"  # open loop, cap reached: send when a slot frees (late) or drop
    seed: int = 0
    tokens: int | None = None  # workload of texts cut to exactly this many tokens
    # Generator processes of the HTTP generator (aio.py); None: as many as the load needs. Not part
    # of the load shape: it changes who sends, not what is sent.
    processes: int | None = None

    def __post_init__(self) -> None:
        def bad(field_name: str, why: str) -> None:
            raise LoadSpecError(f"{field_name}: {why}, got {getattr(self, field_name)!r}")

        for name in ("batch_size", "trials"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in ("concurrency", "max_concurrency"):  # a thread each
            if why := in_flight_problem(getattr(self, name)):
                raise LoadSpecError(f"{name}: {why}")
        if self.warmup_requests < 0:
            bad("warmup_requests", "must be >= 0")
        if (self.requests is None) == (self.duration_s is None):
            raise LoadSpecError("requests/duration_s: set exactly one of them")
        if self.requests is not None and self.requests < 1:
            bad("requests", "must be >= 1")
        if self.duration_s is not None and (why := duration_problem(self.duration_s)):
            raise LoadSpecError(f"duration_s: {why}")
        if self.rate is not None and (why := rate_problem(self.rate)):
            raise LoadSpecError(f"rate: {why}")
        if self.arrival not in ARRIVALS:
            bad("arrival", f"must be one of {', '.join(ARRIVALS)}")
        if not (self.burstiness > 0 and math.isfinite(self.burstiness)):
            bad("burstiness", "must be > 0")
        if self.on_cap not in CAP_POLICIES:
            bad("on_cap", f"must be one of {', '.join(CAP_POLICIES)}")
        if self.tokens is not None and self.tokens < 1:
            bad("tokens", "must be >= 1")
        if self.processes is not None and (
            isinstance(self.processes, bool) or not isinstance(self.processes, int) or not 1 <= self.processes <= 64
        ):
            bad("processes", "must be an integer from 1 to 64")

    @property
    def mode(self) -> str:
        return "open" if self.rate is not None else "closed"

    def load_shape(self, workload: str = "corpus") -> dict[str, Any]:
        """Everything that makes two perf results comparable as a load (the perf result key uses it):
        mode, rate or concurrency, arrival, batch, workload, tokens."""
        shape: dict[str, Any] = {"mode": self.mode, "batch_size": self.batch_size, "workload": workload}
        if self.tokens is not None:
            shape["tokens"] = self.tokens
        if self.mode == "open":
            shape.update(rate=self.rate, arrival=self.arrival, max_concurrency=self.max_concurrency, on_cap=self.on_cap)
            if self.arrival == "gamma":
                shape["burstiness"] = self.burstiness
        else:
            shape["concurrency"] = self.concurrency
        return shape

    def variant(self, workload: str = "corpus", swept: str | None = None) -> str:
        """The load shape as the short key saved targets and measurements are filed under (closed loop
        keeps its historical form perf@corpus-b1-c16). `swept`: the parameter a sweep varies, left out
        and named at the end instead (perf@corpus-b1-sweep-concurrency)."""
        what = f"tokens{self.tokens}" if self.tokens is not None and swept != "tokens" else workload
        batch = "" if swept == "batch" else f"-b{self.batch_size}"
        if self.mode == "closed" or swept == "concurrency":
            parts = f"perf@{what}{batch}" + ("" if swept == "concurrency" else f"-c{self.concurrency}")
        else:
            arrival = f"gamma{self.burstiness:g}" if self.arrival == "gamma" else self.arrival
            # 6 significant digits as before; 1e+06 has no '+' (not allowed in a key): 1e06
            rate = "" if swept == "rate" else f"-r{self.rate:g}".replace("e+", "e")
            cap = f"-m{self.max_concurrency}" + ("-drop" if self.on_cap == "drop" else "")
            parts = f"perf@{what}{batch}-{arrival}{rate}{cap}"
        return parts + (f"-sweep-{swept}" if swept else "")

    def shape_key(self, workload: str = "corpus", swept: str | None = None) -> str:
        """The load-shape part of a perf ResultKey (lib/gates/keys.py): `variant` without its prefix."""
        return self.variant(workload, swept).removeprefix("perf@")


@dataclass
class Trial:
    latencies_ms: np.ndarray  # successful requests only (open loop: from the scheduled send time)
    items: int
    tokens: int
    errors: int
    duration_s: float  # from the first counted request's start (open loop: scheduled start) to the last end
    error_messages: list[str] = field(default_factory=list)
    # Per successful request, what the server says it spent (SIE's `timing`: total_ms, queue_ms,
    # inference_ms, ...), aligned with latencies_ms; empty when the engine reports nothing.
    server_timing_ms: dict[str, np.ndarray] = field(default_factory=dict)
    # Open loop only: service time from the actual send and send lag (actual - scheduled), aligned with
    # latencies_ms; how many were scheduled, sent late (in-flight cap), dropped; the schedule's own rate.
    service_ms: np.ndarray | None = None
    scheduled_at_s: np.ndarray | None = None  # from the first counted scheduled send
    send_lag_ms: np.ndarray | None = None
    scheduled: int = 0
    late: int = 0
    dropped: int = 0
    dropped_at_end: int = 0  # of dropped: still due when the trial's duration (and grace) ended
    offered_rate: float | None = None
    stopped_early: bool = False
    # The latency HdrHistogram when the generator processes built it (merged exactly; aio.py); else
    # it is built from latencies_ms, with the same result.
    hist: Any = None

    @property
    def open_loop(self) -> bool:
        return self.service_ms is not None

    def histogram(self):
        return self.hist if self.hist is not None else histogram.histogram_of(self.latencies_ms)

    def metrics(self) -> dict[str, float]:
        lat = self.latencies_ms
        out: dict[str, float] = {}
        if len(lat):
            out.update(histogram.summary(self.histogram(), "latency"))
            out["latency_mean_ms"] = float(lat.mean())  # exact (the histogram's is within 0.1%)
        if self.open_loop and len(lat):
            out.update(histogram.summary(histogram.histogram_of(self.service_ms), "service"))
            out["service_mean_ms"] = float(self.service_ms.mean())
            out["send_lag_p50_ms"] = float(np.percentile(self.send_lag_ms, 50))
            out["send_lag_p99_ms"] = float(np.percentile(self.send_lag_ms, 99))
        for key, values in sorted(self.server_timing_ms.items()):
            # the same percentile rule as the client's latency (HdrHistogram, no interpolation), so the
            # server's p50 is comparable with (and, per request, never above) the client's
            prefix = f"server_{key.removesuffix('_ms')}"
            server = histogram.summary(histogram.histogram_of(values), prefix)
            out.update({k: server[k] for k in (f"{prefix}_p50_ms", f"{prefix}_p99_ms") if k in server})
        total = self.server_timing_ms.get("total_ms")
        base = self.service_ms if self.open_loop else lat
        if total is not None and len(total) == len(lat):
            # what the client, the network and HTTP add on top of the server's own time
            out["client_overhead_p50_ms"] = float(np.percentile(base - total, 50))
        out["completed"] = float(len(lat))
        out["errors"] = float(self.errors)
        if self.open_loop:
            out["scheduled"] = float(self.scheduled)
            out["late"] = float(self.late)
            out["dropped"] = float(self.dropped)
            out["dropped_at_end"] = float(self.dropped_at_end)
            if self.offered_rate is not None:
                out["offered_rate_per_s"] = self.offered_rate
        if self.duration_s > 0:
            out["items_per_s"] = self.items / self.duration_s
            out["tokens_per_s"] = self.tokens / self.duration_s
            out["requests_per_s"] = len(lat) / self.duration_s
        return out


def request_items(i: int, texts: Sequence[str], batch_size: int) -> list[int]:
    """Indices of the texts request i carries: deterministic, wrapping around the workload."""
    start = (i * batch_size) % len(texts)
    return [(start + j) % len(texts) for j in range(batch_size)]


def run_trial(
    send: Callable[[list[str]], Any], texts: Sequence[str], token_counts: Sequence[int], spec: LoadSpec
) -> Trial:
    """One closed-loop trial. `send` raises on failure (a failed request counts as an error) and may
    return the server's own timing of the request as {name: ms}."""
    lock = threading.Lock()
    counter = {"next": 0}
    warm_end = spec.warmup_requests
    stop_at = None if spec.requests is None else warm_end + spec.requests
    records: list[tuple[float, float, int, int, dict | None]] = []  # start, end, items, tokens, server timing
    errors: list[str] = []
    deadline: list[float | None] = [None]

    def worker() -> None:
        while True:
            with lock:
                i = counter["next"]
                now = time.perf_counter()
                if stop_at is not None and i >= stop_at:
                    return
                if deadline[0] is not None and now >= deadline[0]:
                    return
                counter["next"] += 1
            idx = request_items(i, texts, spec.batch_size)
            t0 = time.perf_counter()
            timing = None
            try:
                reply = send([texts[j] for j in idx])
                timing = reply if isinstance(reply, dict) else None
                ok = True
            except Exception as err:  # any failure of the system under test is an error, not a crash
                ok = False
                msg = f"{type(err).__name__}: {err}"
            t1 = time.perf_counter()
            with lock:
                if i >= warm_end:
                    if deadline[0] is None and spec.duration_s is not None:
                        deadline[0] = t0 + spec.duration_s
                    if ok:
                        records.append((t0, t1, len(idx), sum(token_counts[j] for j in idx), timing))
                    else:
                        errors.append(msg)

    # Warm-up runs through the same workers; its requests are simply not recorded.
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(spec.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not records:
        return Trial(np.array([]), 0, 0, len(errors), 0.0, errors[:5])
    starts = np.array([r[0] for r in records])
    ends = np.array([r[1] for r in records])
    timings = [r[4] for r in records]
    server: dict[str, np.ndarray] = {}
    if all(timings):  # only when every counted request reported it: percentiles must cover the same set
        for key in sorted(set.intersection(*(set(t) for t in timings))):
            server[key] = np.array([float(t[key]) for t in timings])
    return Trial(
        latencies_ms=(ends - starts) * 1000.0,
        items=sum(r[2] for r in records),
        tokens=sum(r[3] for r in records),
        errors=len(errors),
        duration_s=float(ends.max() - starts.min()),
        error_messages=errors[:5],
        server_timing_ms=server,
    )


@dataclass
class PerfResult:
    trials: list[Trial]
    spec: LoadSpec

    def metrics(self) -> dict[str, float]:
        """Median over trials of each trial metric (robust to one disturbed trial)."""
        per_trial = [t.metrics() for t in self.trials]
        names = sorted({k for m in per_trial for k in m})
        return {k: float(statistics.median(m[k] for m in per_trial if k in m)) for k in names}

    def spread(self) -> dict[str, dict[str, float]]:
        per_trial = [t.metrics() for t in self.trials]
        out = {}
        for k in self.metrics():
            vals = [m[k] for m in per_trial if k in m]
            out[k] = {"min": min(vals), "max": max(vals), "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0}
        return out

    @property
    def errors(self) -> int:
        return sum(t.errors for t in self.trials)

    def histograms(self) -> dict[str, Any]:
        """The HdrHistograms of latency (us, encoded), per trial and merged over trials: any percentile
        can be recomputed from the report."""
        hists = [t.histogram() for t in self.trials]
        return {
            "unit": "us",
            "significant_digits": histogram.SIGNIFICANT_DIGITS,
            "latency_trials": [histogram.encode(h) for h in hists],
            "latency_all": histogram.encode(histogram.merged(hists)),
        }

    def requests_frame(self) -> pd.DataFrame:
        """One row per counted request: trial, client latency, and server timings when reported."""
        frames = []
        for i, t in enumerate(self.trials):
            columns = {"trial": np.full(len(t.latencies_ms), i), "latency_ms": t.latencies_ms}
            if t.open_loop:
                columns.update(scheduled_at_s=t.scheduled_at_s, service_ms=t.service_ms, send_lag_ms=t.send_lag_ms)
            columns.update({f"server_{k}": v for k, v in t.server_timing_ms.items()})
            frames.append(pd.DataFrame(columns))
        if not frames:
            return pd.DataFrame(columns=["trial", "latency_ms"])
        return pd.concat(frames, ignore_index=True)


def run_open_trial(
    send: Callable[[list[str]], Any],
    texts: Sequence[str],
    token_counts: Sequence[int],
    spec: LoadSpec,
    stop: threading.Event | None = None,
    on_done: Callable[[int, float, float, float, bool], None] | None = None,
) -> Trial:
    """One open-loop trial: warm-up requests at the same rate first (not counted), then the counted
    ones (spec.requests, or all scheduled within spec.duration_s). The schedule is lazy: memory does
    not grow with rate x duration."""
    rate = float(spec.rate)  # type: ignore[arg-type]
    warm = spec.warmup_requests
    counted = arrival_chunks(
        rate,
        spec.arrival,
        requests=spec.requests,
        duration_s=spec.duration_s,
        burstiness=spec.burstiness,
        seed=spec.seed,
    )
    rec = run_schedule(
        lambda i: send([texts[j] for j in request_items(i, texts, spec.batch_size)]),
        with_warmup(warm, rate, counted, warm / rate),
        spec.max_concurrency,
        spec.on_cap,
        stop,
        on_done,
        first_counted=warm,
        deadline_s=None if spec.duration_s is None else warm / rate + duration_deadline(spec.duration_s),
    )
    return trial_from_records(rec, len(texts), spec.batch_size, token_counts)


def trial_from_records(rec: OpenLoopRecords, n_texts: int, batch_size: int, token_counts: Sequence[int]) -> Trial:
    """An open-loop Trial from run_schedule's records of the counted requests (a stopped run counts
    only what was scheduled before the stop). Request i carries request_items(i, texts, batch_size)."""
    good = rec.index
    items = (good[:, None] * batch_size + np.arange(batch_size)) % max(n_texts, 1)  # request_items, vectorized
    tokens = int(np.asarray(token_counts, dtype=np.int64)[items].sum()) if len(good) else 0
    first = rec.first_scheduled if rec.n_scheduled else 0.0
    last_end = rec.last_ended if not math.isnan(rec.last_ended) else first
    last_scheduled = rec.last_scheduled if rec.n_scheduled else first
    span = last_scheduled - first if rec.n_scheduled > 1 else 0.0
    return Trial(
        latencies_ms=(rec.ended - rec.scheduled) * 1000.0,
        items=len(good) * batch_size,
        tokens=tokens,
        errors=rec.n_failed,
        duration_s=float(max(last_end, last_scheduled) - first),
        error_messages=rec.errors[:5],
        server_timing_ms=rec.server_timing_ms,
        service_ms=(rec.ended - rec.sent) * 1000.0,
        scheduled_at_s=rec.scheduled - first,
        send_lag_ms=(rec.sent - rec.scheduled) * 1000.0,
        scheduled=rec.n_scheduled,
        late=rec.n_late,
        dropped=rec.n_dropped,
        dropped_at_end=rec.n_dropped_at_end,
        offered_rate=float((rec.n_scheduled - 1) / span) if span > 0 else None,
        stopped_early=rec.stopped_early,
    )


def prepared_target(
    prepare: Callable[[list[int]], tuple[str, dict[str, str], bytes] | None],
    n_texts: int,
    batch_size: int,
    timeout_s: float,
) -> aio.HttpTarget | None:
    """An HttpTarget whose bodies are every distinct request of the run, encoded now: request i
    carries texts (i*B .. i*B+B-1) mod n, which repeat every n / gcd(n, B) requests. `prepare(items)`
    gives (url, headers, body) of one request, or None when the engine cannot be driven this way."""
    period = n_texts // math.gcd(n_texts, batch_size)
    bodies = []
    url, headers = "", {}
    for i in range(period):
        got = prepare(request_items(i, range(n_texts), batch_size))
        if got is None:
            return None
        url, headers, body = got
        bodies.append(body)
    return aio.HttpTarget(url, headers, tuple(bodies), timeout_s)


def run_http_trial(
    target: aio.HttpTarget,
    n_texts: int,
    token_counts: Sequence[int],
    spec: LoadSpec,
    stop: threading.Event | None = None,
    check: Callable[[int, bytes], None] | None = None,
    redact: Callable[[str], str] | None = None,
) -> Trial:
    """One trial (closed or open loop, as `spec` says) by the fast HTTP generator (aio.py), split
    over spec.processes generator processes (None: processes_for the load). `check(i, body)` validates
    a sample of reply bodies after the trial (it raises on a malformed one); `redact` scrubs secrets
    from the error messages kept (a server may echo a request back)."""
    job = aio.Job.from_spec(target, spec)
    processes = spec.processes or aio.processes_for(job.mode, job.clients, job.rate, fast=aio.fast_path(target))
    parts = aio.run_parts(job, processes, stop)
    if check is not None:
        for part in parts:
            for i, body in part.samples:
                check(i, body)
    rec = aio.merged_records(parts)
    if redact is not None:
        rec.errors = [redact(e) for e in rec.errors]
    hist = aio.merged_histogram(parts)
    if spec.mode == "open":
        trial = trial_from_records(rec, n_texts, spec.batch_size, token_counts)
    else:
        good = rec.index
        items = (good[:, None] * spec.batch_size + np.arange(spec.batch_size)) % max(n_texts, 1)
        trial = Trial(
            latencies_ms=(rec.ended - rec.scheduled) * 1000.0,
            items=len(good) * spec.batch_size,
            tokens=int(np.asarray(token_counts, dtype=np.int64)[items].sum()) if len(good) else 0,
            errors=rec.n_failed,
            duration_s=float(rec.ended.max() - rec.sent.min()) if len(good) else 0.0,
            error_messages=rec.errors[:5],
            stopped_early=rec.stopped_early,
        )
    trial.hist = hist
    return trial


def run_load(
    send: Callable[[list[str]], Any],
    texts: Sequence[str],
    token_counts: Sequence[int],
    spec: LoadSpec,
    stop: threading.Event | None = None,
    target: aio.HttpTarget | None = None,
    check: Callable[[int, bytes], None] | None = None,
    redact: Callable[[str], str] | None = None,
) -> PerfResult:
    """Every trial of `spec`: by the fast HTTP generator when `target` is given (the requests
    `send` would make, encoded before the run; aio.py), else through `send` on threads (any engine)."""
    if not texts:
        raise ValueError("no texts to send")
    # Every trial replays the same request sequence (and open loop the same schedule), so trials
    # differ only by noise.
    trials = []
    for _ in range(spec.trials):
        if target is not None:
            trials.append(run_http_trial(target, len(texts), token_counts, spec, stop, check, redact))
        elif spec.mode == "open":
            trials.append(run_open_trial(send, texts, token_counts, spec, stop))
        else:
            trials.append(run_trial(send, texts, token_counts, spec))
        if stop is not None and stop.is_set():
            break
    return PerfResult(trials, spec)


def latency_histogram_png(result: PerfResult, path, title: str) -> None:
    """A latency histogram (all trials, one colour each) written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, t in enumerate(result.trials):
        if len(t.latencies_ms):
            ax.hist(t.latencies_ms, bins=40, alpha=0.5, label=f"trial {i + 1}")
    m = result.metrics()
    for name in ("p50", "p99"):
        key = f"latency_{name}_ms"
        if key in m:
            ax.axvline(
                m[key], linestyle="--", color="black" if name == "p50" else "red", label=f"{name} {m[key]:.1f} ms"
            )
    ax.set_xlabel("request latency (ms)")
    ax.set_ylabel("requests")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
