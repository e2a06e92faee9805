"""`sie-bench loadtest SCENARIO.yaml`: open-loop load profiles (constant, ramp, step) against each
model x source of a scenario, with a live display (target vs achieved rps, rolling p50/p99, errors
per model). Ctrl-C stops the run cleanly: in-flight requests finish, and what ran is written."""

import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sie_evals.cli_sources import server_url_options
from sie_evals.lib.core.atomic import atomic_write_json
from sie_evals.lib.core.run_conditions import hardware, now_iso, software
from sie_evals.lib.perf import histogram
from sie_evals.lib.perf.load import request_items, trial_from_records
from sie_evals.lib.perf.openloop import duration_deadline, rate_curve_chunks, run_schedule, with_warmup
from sie_evals.lib.perf.scenario import LoadProfile, Scenario, load_scenario
from sie_evals.lib.perf.sweep import goodput, parse_slo, with_error_rate


class LiveStats:
    """Completions of the running profile, appended by the worker threads (deque appends are atomic)."""

    def __init__(self, model: str, source: str, profile: LoadProfile, warmup: int, window_s: float):
        self.model, self.source, self.profile, self.window_s = model, source, profile, window_s
        self.warmup = warmup
        self.done: deque[tuple[float, float, bool]] = deque()  # end time, latency ms, ok
        self.counted_start: float | None = None
        self.errors = 0
        self.completed = 0

    def on_done(self, i: int, scheduled: float, sent: float, ended: float, ok: bool) -> None:
        if i < self.warmup:
            return
        if ok:
            self.completed += 1
        else:
            self.errors += 1
        self.done.append((ended, (ended - scheduled) * 1000.0, ok))

    def row(self, now: float) -> list[str]:
        counted_for = 0.0 if self.counted_start is None else now - self.counted_start
        phase = (
            "warm-up"
            if counted_for <= 0
            else f"{min(counted_for, self.profile.duration_s):.0f}/{self.profile.duration_s:g}s"
        )
        while self.done and self.done[0][0] < now - self.window_s:
            self.done.popleft()
        recent = list(self.done)
        window = min(self.window_s, max(counted_for, 1e-9))
        lat = np.array([r[1] for r in recent if r[2]])
        target = self.profile.target_at(max(counted_for, 0.0)) if counted_for > 0 else self.profile.target_at(0.0)
        return [
            self.model,
            self.source,
            self.profile.name,
            phase,
            f"{target:.1f}",
            f"{len(lat) / window:.1f}" if counted_for > 0 else "-",
            f"{np.percentile(lat, 50):.1f}" if len(lat) else "-",
            f"{np.percentile(lat, 99):.1f}" if len(lat) else "-",
            str(self.completed),
            str(self.errors),
        ]


HEADERS = ["model", "source", "profile", "phase", "target rps", "achieved rps", "p50 ms", "p99 ms", "ok", "errors"]


def _live_table(rows: list[list[str]], note: str) -> Group:
    table = Table(title=f"loadtest (rolling window, {note})")
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("model", "source", "profile", "phase") else "right")
    for r in rows:
        table.add_row(*(Text(c) for c in r))  # user-given names: never rich markup
    return Group(table)


def _run_profile(
    engine, kind, texts, counts, profile: LoadProfile, sc: Scenario, stats: LiveStats, stop, live, done_rows
):
    """One load profile: warm-up at the starting rate (not counted), then the counted schedule."""
    from sie_evals.lib.harness.evaluation import send_timed

    start_rate = profile.target_at(0.0)
    # warm-up: constant arrivals at the starting rate, every one that falls within warmup_s
    warm = math.ceil(profile.warmup_s * start_rate) if profile.warmup_s > 0 else 0
    times, rates = profile.rate_curve()
    counted = rate_curve_chunks(times, rates, profile.arrival, burstiness=profile.burstiness, seed=sc.seed)
    offsets = with_warmup(warm, start_rate, counted, profile.warmup_s)  # lazy: no array of rate x duration
    stats.warmup = warm
    records: dict[str, Any] = {}
    finished = threading.Event()  # waited on instead of Thread.join: a Ctrl-C inside join() can break it

    def dispatch() -> None:
        try:
            records["rec"] = run_schedule(
                lambda i: send_timed(engine, [texts[j] for j in request_items(i, texts, profile.batch_size)], kind),
                offsets,
                profile.concurrency,
                profile.on_cap,
                stop,
                stats.on_done,
                first_counted=warm,
                deadline_s=profile.warmup_s + duration_deadline(profile.duration_s),
            )
        except BaseException as err:  # re-raised in the main thread below
            records["error"] = err
        finally:
            finished.set()

    thread = threading.Thread(target=dispatch, daemon=True)
    t0 = time.perf_counter()
    stats.counted_start = t0 + 0.05 + profile.warmup_s  # run_schedule's lead-in, then the warm-up
    thread.start()
    interrupted = False
    while not finished.is_set():
        try:
            live.update(_live_table([*done_rows, stats.row(time.perf_counter())], _note(stop)))
            finished.wait(0.25)
        except KeyboardInterrupt:
            interrupted = True
            stop.set()  # the dispatcher stops sending; in-flight requests finish
    if "error" in records:
        raise records["error"]
    return trial_from_records(records["rec"], len(texts), profile.batch_size, counts), interrupted


def _write(output: Path, sc: Scenario, scenario: Path, started: str, interrupted: bool, results, complete: bool):
    report = {
        "format": 1,
        "type": "loadtest",
        "scenario": sc.model_dump(),
        "scenario_file": str(scenario),
        "started": started,
        "finished": now_iso(),
        # complete: every profile ran to its end; false while profiles remain (a file is written after
        # each) and after Ctrl-C, so a file never says both interrupted and complete
        "complete": complete and not interrupted,
        "interrupted": interrupted,
        "hardware": hardware(),
        "software": software(),
        "results": results,
    }
    atomic_write_json(output, report)
    return report


def _note(stop) -> str:
    return "stopping: waiting for in-flight requests" if stop.is_set() else "Ctrl-C stops and writes what ran"


def _result(entry, source: str, engine, lp: LoadProfile, sc: Scenario, trial, slos) -> dict[str, Any]:
    """One profile's result entry: its load shape, metrics (goodput and SLO verdict with SLOs) and histogram."""
    metrics = with_error_rate(trial.metrics())
    if slos:
        metrics["goodput_per_s"] = goodput(trial.latencies_ms, trial.duration_s, slos)
        metrics["slo_met"] = float(all(s.met(metrics) for s in slos))
    return {
        "model": entry.model,
        "model_profile": entry.profile,
        "source": source,
        "engine": engine.info().as_dict(),
        "profile": lp.model_dump(),
        "load_shape": {
            "mode": "open",
            "pattern": lp.pattern,
            "rate": lp.rps,
            "start_rate": lp.start_rps,
            "steps": lp.steps,
            "arrival": lp.arrival,
            "max_concurrency": lp.concurrency,
            "on_cap": lp.on_cap,
            "batch_size": lp.batch_size,
            "workload": sc.workload,
            "tokens": sc.tokens,
        },
        "metrics": metrics,
        "stopped_early": trial.stopped_early,
        "error_messages": trial.error_messages,
        "latency_histogram_hdr": histogram.encode(trial.histogram()),
    }


def _prepare(sc: Scenario, data_dir: Path | None) -> list[tuple]:
    """Every model, profile and workload validated (and its texts cut) before any server starts."""
    from sie_evals.lib.config.model_config import find_model_config
    from sie_evals.lib.core import paths
    from sie_evals.lib.harness.evaluation import DataOptions, PerfWorkload, load_task

    prepared = []
    for entry in sc.models:
        config = find_model_config(entry.model, paths.model_configs_dir())
        profile = config.resolve_profile(entry.profile)
        spec, data = load_task(
            sc.task, DataOptions(None, sc.data.limit_queries, sc.data.corpus_size, data_dir or paths.data_dir())
        )
        work = PerfWorkload(config, profile, spec, data, sc.workload)
        texts, counts = work.texts_and_counts(sc.tokens)
        prepared.append((entry, config, profile, work, texts, counts))
    return prepared


SUMMARY_COLUMNS = ("offered/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "late", "dropped")
SUMMARY_METRICS = (
    "offered_rate_per_s", "requests_per_s", "latency_p50_ms", "latency_p99_ms", "latency_p99.9_ms",
    "errors", "late", "dropped",
)  # fmt: skip


def _summary(sc: Scenario, results: list[dict[str, Any]], slos, interrupted: bool) -> Table:
    summary = Table(title=f"loadtest {sc.name}" + (" (interrupted)" if interrupted else ""))
    for h in ("model", "source", "profile"):
        summary.add_column(h, justify="left")
    for h in SUMMARY_COLUMNS:
        summary.add_column(h, justify="right")
    if slos:
        summary.add_column("goodput/s", justify="right")
        summary.add_column(Text(f"SLO {', '.join(sc.slos)}"))
    for r in results:
        m = r["metrics"]
        verdict = [f"{m['goodput_per_s']:.1f}", "met" if m.get("slo_met") else "missed"] if slos else []
        cells = (
            f"{m.get(k, float('nan')):.{0 if k in ('errors', 'late', 'dropped') else 1}f}" for k in SUMMARY_METRICS
        )
        summary.add_row(Text(r["model"]), Text(r["source"]), Text(r["profile"]["name"]), *cells, *verdict)
    return summary


@server_url_options
def loadtest_cmd(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML: models, sources, task, load profiles.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Result JSON (default: loadtest-<name>.json here).")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Local data root.")] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="Torch threads (local, started servers).")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="Device for started servers.")] = None,
    server_urls: dict[str, str] | None = None,  # --<source>-url, --server-url (cli_sources.py)
) -> None:
    """Run a load-test scenario with a live display; exit 2 naming the field on a bad scenario, 130
    after Ctrl-C (the results of what ran are written first)."""
    from sie_evals.lib.harness.evaluation import EngineOptions

    sc = load_scenario(scenario)
    slos = tuple(parse_slo(s) for s in sc.slos)
    output = output or Path(f"loadtest-{sc.name}.json")
    opts = EngineOptions(threads=threads, device=device, server_urls=server_urls or {})
    console = Console(stderr=True, width=max(Console(stderr=True).width, 140))
    prepared = _prepare(sc, data_dir)
    results: list[dict[str, Any]] = []
    started = now_iso()
    with Live(
        _live_table([], _note(threading.Event())), console=console, refresh_per_second=4, transient=False
    ) as live:
        interrupted = _run_all(
            prepared,
            sc,
            opts,
            slos,
            live,
            results,
            lambda i, done: _write(output, sc, scenario, started, i, results, done),
        )
    _write(output, sc, scenario, started, interrupted, results, complete=not interrupted)
    out = Console(width=max(Console().width, 140))
    out.print(_summary(sc, results, slos, interrupted))
    out.print(Text(f"results written to {output}"))
    if interrupted:
        raise typer.Exit(130)


def _run_all(prepared, sc: Scenario, opts, slos, live: Live, results: list[dict[str, Any]], save) -> bool:
    """Each model x source x load profile in turn; `save(interrupted, complete)` after every profile, so
    what ran so far is on disk whatever happens next. Returns whether Ctrl-C stopped the run."""
    from sie_evals.lib.engines import create_engine

    done_rows: list[list[str]] = []
    stop = threading.Event()
    interrupted = False
    for entry, config, profile, work, texts, counts in prepared:
        for source in sc.sources:
            if interrupted:
                break
            engine = create_engine(source, config, profile, opts)
            with engine:
                try:
                    live.update(_live_table(done_rows, f"starting {source} for {entry.model}"))
                    engine.start()
                except KeyboardInterrupt:
                    interrupted = True
                    break
                for lp in sc.profiles:
                    stats = LiveStats(entry.model, source, lp, 0, sc.window_s)
                    trial, hit = _run_profile(engine, work.kind, texts, counts, lp, sc, stats, stop, live, done_rows)
                    interrupted = interrupted or hit
                    done_rows.append(stats.row(time.perf_counter()))
                    results.append(_result(entry, source, engine, lp, sc, trial, slos))
                    save(interrupted, False)
                    if interrupted:
                        break
    live.update(_live_table(done_rows, "interrupted" if interrupted else "done"))
    return interrupted
