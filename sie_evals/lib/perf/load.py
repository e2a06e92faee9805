"""Perf evals: a closed-loop load generator with latency percentiles and throughput.

C client threads each send a request of B items, wait for the reply, and send the next, until the
run's request budget (or duration) is spent; warm-up requests come first and are not counted.
Request i always carries the same texts (drawn in order from the workload, wrapping around), so a
run is repeatable. Tokens are counted once per text with the model's own tokenizer (truncated at
the profile's max_seq_length, special tokens included): the same rule for every engine.
Percentiles use linear interpolation over all counted requests of a trial (numpy's default)."""

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

PERCENTILES = {"p50": 50, "p90": 90, "p95": 95, "p99": 99}
# What --save-targets stores for perf and --check-targets gates on.
PERF_TARGET_METRICS = ("latency_p50_ms", "latency_p99_ms", "items_per_s", "tokens_per_s")


@dataclass(frozen=True)
class LoadSpec:
    batch_size: int = 1
    concurrency: int = 16
    requests: int | None = 200  # per trial; or set duration_s
    duration_s: float | None = None
    warmup_requests: int = 16
    trials: int = 3

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.concurrency < 1 or self.trials < 1 or self.warmup_requests < 0:
            raise ValueError("batch size, concurrency and trials must be >= 1, warm-up >= 0")
        if (self.requests is None) == (self.duration_s is None):
            raise ValueError("set exactly one of requests or duration_s")


@dataclass
class Trial:
    latencies_ms: np.ndarray  # successful requests only
    items: int
    tokens: int
    errors: int
    duration_s: float  # from the first counted request's start to the last one's end
    error_messages: list[str] = field(default_factory=list)
    # Per successful request, what the server says it spent (SIE's `timing`: total_ms, queue_ms,
    # inference_ms, ...), aligned with latencies_ms; empty when the engine reports nothing.
    server_timing_ms: dict[str, np.ndarray] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        lat = self.latencies_ms
        out: dict[str, float] = {}
        if len(lat):
            for name, q in PERCENTILES.items():
                out[f"latency_{name}_ms"] = float(np.percentile(lat, q))
            out["latency_min_ms"] = float(lat.min())
            out["latency_max_ms"] = float(lat.max())
            out["latency_mean_ms"] = float(lat.mean())
        for key, values in sorted(self.server_timing_ms.items()):
            name = key.removesuffix("_ms")
            out[f"server_{name}_p50_ms"] = float(np.percentile(values, 50))
            out[f"server_{name}_p99_ms"] = float(np.percentile(values, 99))
        total = self.server_timing_ms.get("total_ms")
        if total is not None and len(total) == len(lat):
            # what the client, the network and HTTP add on top of the server's own time
            out["client_overhead_p50_ms"] = float(np.percentile(lat - total, 50))
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

    def requests_frame(self) -> pd.DataFrame:
        """One row per counted request: trial, client latency, and server timings when reported."""
        frames = []
        for i, t in enumerate(self.trials):
            columns = {"trial": np.full(len(t.latencies_ms), i), "latency_ms": t.latencies_ms}
            columns.update({f"server_{k}": v for k, v in t.server_timing_ms.items()})
            frames.append(pd.DataFrame(columns))
        if not frames:
            return pd.DataFrame(columns=["trial", "latency_ms"])
        return pd.concat(frames, ignore_index=True)


def run_load(
    send: Callable[[list[str]], Any], texts: Sequence[str], token_counts: Sequence[int], spec: LoadSpec
) -> PerfResult:
    if not texts:
        raise ValueError("no texts to send")
    # Every trial replays the same request sequence, so trials differ only by noise.
    return PerfResult([run_trial(send, texts, token_counts, spec) for _ in range(spec.trials)], spec)


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
