"""`sie-bench`: run evals from the command line.

Exit codes: 0 success, 1 drift (a --check-* failed) or an engine/eval failure, 2 usage or input
error (bad config, dataset, result file, unknown model/task/source).
"""

import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from sie_evals.lib.config import model_config as mc
from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import InputError, SieEvalsError
from sie_evals.lib.core.sources import ALL_SOURCES

app = typer.Typer(
    help="Benchmark-driven development for text-embedding models and inference servers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Paths and user text print literally: no markup, no emoji codes (`corpus.jsonl:100:` is not 💯).
PLAIN = {"emoji": False, "markup": False, "highlight": False}
err_console = Console(stderr=True, **PLAIN)


class EvalType(StrEnum):
    quality = "quality"
    perf = "perf"


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SieEvalsError as err:
            err_console.print(Text.assemble(("error:", "bold red"), f" {err}"), soft_wrap=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


@app.command("eval")
@_handle_errors
def eval_cmd(
    model: Annotated[str, typer.Argument(help="Model id (org/name), short name, or config file stem.")],
    task: Annotated[
        str,
        typer.Option(
            "-t",
            "--task",
            help="Task id, e.g. beir/SciFact (alias mteb/SciFact), beir/<Name> for any "
            "BEIR folder under the data root, or mteb/<TaskName> (mteb/<TaskName>/<subset>) for any text task "
            "of the installed mteb.",
        ),
    ],
    eval_type: Annotated[
        EvalType, typer.Option("--type", help="quality (retrieval metrics) or perf.")
    ] = EvalType.quality,
    sources: Annotated[
        str | None,
        typer.Option(
            "-s",
            "--sources",
            help="Comma-separated sources, one report column each: " + ", ".join(ALL_SOURCES) + ". "
            "Default: the first source listed in the model config's `sources` (local in the shipped config).",
            show_default=False,
        ),
    ] = None,
    profile: Annotated[
        str | None, typer.Option("-p", "--profile", help="Profile from the model config (default: default).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "-b",
            "--batch-size",
            min=1,
            help="quality: items per forward pass (default: the profile's batch_size); "
            "perf: items per request (default 1). Env: SIE_EVALS_BATCH_SIZE / SIE_EVALS_PERF_BATCH_SIZE.",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="Torch threads for the local engine and the sie/infinity servers the harness starts.",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="Device of the local engine (default: the profile's, cpu) and of started servers (sie, infinity): "
            "cpu, auto, mps, cuda (all GPUs, data-parallel), cuda:N or a comma-separated list.",
        ),
    ] = None,
    sie_url: Annotated[
        str | None,
        typer.Option(
            "--sie-url", help="Use a running SIE server at this URL instead of starting one ($SIE_EVALS_SIE_URL)."
        ),
    ] = None,
    infinity_url: Annotated[
        str | None,
        typer.Option("--infinity-url", help="Use a running infinity server at this URL ($SIE_EVALS_INFINITY_URL)."),
    ] = None,
    tei_url: Annotated[
        str | None, typer.Option("--tei-url", help="Use a running TEI server at this URL ($SIE_EVALS_TEI_URL).")
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Dataset split (default: the task's, e.g. test).")
    ] = None,
    limit_queries: Annotated[
        int | None,
        typer.Option(
            "--limit-queries",
            min=1,
            help="Deterministic subset: this many queries (test items / pairs for other task types)...",
        ),
    ] = None,
    corpus_size: Annotated[
        int | None,
        typer.Option(
            "--corpus-size",
            min=1,
            help="...and a corpus of their relevant docs filled up to this size by a fixed sample (default 1000).",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option("-c", "--concurrency", min=1, help="perf: concurrent closed-loop clients (default 16)."),
    ] = None,
    workload: Annotated[
        str | None,
        typer.Option("--workload", help="perf: encode the task's corpus (documents, default) or its queries."),
    ] = None,
    requests: Annotated[
        int | None, typer.Option("--requests", min=1, help="perf: counted requests per trial (default 200).")
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", min=0.1, help="perf: seconds per trial instead of --requests.")
    ] = None,
    warmup: Annotated[
        int | None, typer.Option("--warmup", min=0, help="perf: warm-up requests per trial (default 16).")
    ] = None,
    trials: Annotated[
        int | None, typer.Option("--trials", min=1, help="perf: repeated trials, median reported (default 3).")
    ] = None,
    check_targets: Annotated[
        bool,
        typer.Option(
            "--check-targets",
            help="Exit 1 if a metric drifts past its target's margin (quality < 0.99x, "
            "latency > 2.5x, throughput < 1/2.5x by default).",
        ),
    ] = False,
    check_measurements: Annotated[
        bool,
        typer.Option(
            "--check-measurements",
            help="Same against the latest saved measurement (quality < 0.98x, "
            "latency > 1.5x, throughput < 1/1.5x by default).",
        ),
    ] = False,
    require_targets: Annotated[
        bool,
        typer.Option(
            "--require-targets", help="A missing target/measurement fails the check (default: reported as 'no target')."
        ),
    ] = False,
    save_targets: Annotated[
        str | None,
        typer.Option(
            "--save-targets",
            metavar="SOURCE",
            help="Save SOURCE's results as the targets for this task, profile and data variant in the model config.",
        ),
    ] = None,
    save_measurements: Annotated[
        str | None,
        typer.Option(
            "--save-measurements",
            metavar="SOURCE",
            help="Append SOURCE's results to the model config's measurement history.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Write the JSON report here (and per-query Parquet and, for retrieval, the top-k ranking beside it).",
        ),
    ] = None,
    save_run: Annotated[
        Path | None,
        typer.Option(
            "--save-run",
            metavar="PATH",
            help="Retrieval: write the ranked results as a TREC run (PATH) and Parquet (PATH with suffix .parquet); "
            "with several computed sources, PATH gets .<source> before its suffix.",
        ),
    ] = None,
    save_run_k: Annotated[
        int,
        typer.Option("--save-run-k", min=1, help="Documents per query in --save-run, -o and saved results' rankings."),
    ] = 100,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help=f"Local data root (default ${paths.DATA_DIR_ENV}; unset = Hugging Face hub)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help=f"Cache root for this run: embeddings and ONNX/OpenVINO exports "
            f"(default ${paths.CACHE_DIR_ENV} or ~/.cache/sie-evals).",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    record: Annotated[
        bool,
        typer.Option(
            "--record/--no-record", help="Record the result in the Dagster instance when DAGSTER_HOME is set."
        ),
    ] = True,
    rate: Annotated[
        float | None,
        typer.Option("--rate", help="perf: open loop at this many requests/s (latency from the scheduled send)."),
    ] = None,
    arrival: Annotated[
        str, typer.Option("--arrival", help="perf, open loop: constant, poisson or gamma arrivals.")
    ] = "poisson",
    burstiness: Annotated[
        float, typer.Option("--burstiness", help="perf, gamma arrivals: shape (<1 burstier, 1 = Poisson).")
    ] = 1.0,
    max_concurrency: Annotated[
        int, typer.Option("--max-concurrency", help="perf, open loop: in-flight cap (late/dropped when reached).")
    ] = 256,
    on_cap: Annotated[
        str,
        typer.Option("--on-cap", help="perf, open loop, cap reached: late (send when a slot frees) or drop."),
    ] = "late",
    seed: Annotated[int, typer.Option("--seed", help="perf, open loop: arrival schedule seed.")] = 0,
    sweep: Annotated[
        str | None,
        typer.Option(
            "--sweep",
            help="perf: one load point per value: concurrency=1,2,4 | rate=5,10,20 | batch=1,8 | tokens=32,128.",
        ),
    ] = None,
    slo: Annotated[
        list[str] | None,
        typer.Option("--slo", help="perf: e.g. p99_ms<=250 (repeatable): goodput and max_rate_at_slo."),
    ] = None,
    tokens: Annotated[
        str | None,
        typer.Option("--tokens", help="perf: texts of exactly N tokens cut from the corpus; several = a sweep."),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="native (this project's implementation) or mteb (MTEB's task code and evaluators); "
            "default: native where it exists, else mteb.",
        ),
    ] = None,
    results_repo: Annotated[
        Path | None,
        typer.Option(
            "--results-repo",
            help="Local copy of MTEB's results repository (results/<org>__<model>/<revision>/<Task>.json) for the "
            "benchmark source (default $SIE_EVALS_RESULTS_REPO).",
        ),
    ] = None,
    openai_url: Annotated[
        str | None,
        typer.Option(
            "--openai-url",
            help="Source openai: an OpenAI-compatible server, POST {url}/v1/embeddings ($SIE_EVALS_OPENAI_URL).",
        ),
    ] = None,
    openai_model: Annotated[
        str | None,
        typer.Option("--openai-model", help="Source openai: the request's model (default: profile's openai_model)."),
    ] = None,
) -> None:
    """Evaluate MODEL on a task with one or more sources and print a metrics table.

    Every option without a value takes its default from SIE_EVALS_<FIELD> (lib/config/settings.py),
    the same settings the Dagster resource uses. A check with nothing saved prints a WARN and passes
    unless --require-targets. Exit codes: 0 pass, 1 drift (a check failed) or an engine failure, 2
    usage or input error."""
    from sie_evals.lib.config.settings import eval_defaults
    from sie_evals.lib.harness.eval_run import EvalRequest, parse_sources, run_eval, write_runs
    from sie_evals.lib.harness.evaluation import DataOptions, EngineOptions
    from sie_evals.lib.harness.report import render_table, write_report

    if results_repo is not None:  # read by the benchmark source (lib/gates/benchmark_scores.py)
        if not (results_repo / "results").is_dir():
            raise InputError(f"--results-repo {results_repo}: no results/ folder (MTEB's results repository layout)")
        os.environ["SIE_EVALS_RESULTS_REPO"] = str(results_repo)
    perf = eval_type == EvalType.perf
    if workload is not None and workload not in ("corpus", "queries"):
        raise InputError(f"--workload must be corpus or queries, got {workload!r}")
    settings = eval_defaults(
        data_dir=str(data_dir) if data_dir else None,
        cache_dir=str(cache_dir) if cache_dir else None,
        profile=profile,
        split=split,
        limit_queries=limit_queries,
        corpus_size=corpus_size,
        batch_size=None if perf else batch_size,
        perf_batch_size=batch_size if perf else None,
        threads=threads,
        device=device,
        perf_workload=workload,
        perf_concurrency=concurrency,
        perf_requests=requests,
        perf_warmup_requests=warmup,
        perf_trials=trials,
        perf_rate=rate if perf else None,
    )
    if settings.corpus_size and not settings.limit_queries:
        raise InputError("--corpus-size only applies together with --limit-queries")
    if requests and duration:
        raise InputError("give --requests or --duration, not both")
    load, perf_sweep, slos = _perf_load(
        settings.perf_batch_size,
        settings.perf_concurrency,
        settings.perf_requests,
        duration,
        settings.perf_warmup_requests,
        settings.perf_trials,
        settings.perf_rate if perf else rate,
        arrival,
        burstiness,
        max_concurrency,
        on_cap,
        seed,
        sweep,
        slo,
        tokens,
        perf,
    )
    if perf_sweep is not None and (save_targets or save_measurements or check_targets or check_measurements):
        raise InputError("--sweep: saving or checking targets applies to one load shape, not a sweep")
    request = EvalRequest(
        model=model,
        task=task,
        sources=parse_sources(sources),
        profile=settings.profile,
        data=DataOptions(settings.split, settings.limit_queries, settings.corpus_size, settings.data_root(), backend),
        engine=EngineOptions(
            batch_size=settings.batch_size if not perf else settings.perf_batch_size,
            threads=settings.threads,
            progress=progress and sys.stderr.isatty(),
            device=settings.device,
            sie_url=sie_url,
            infinity_url=infinity_url,
            tei_url=tei_url,
            openai_url=openai_url,
            openai_model=openai_model,
        ),
        cache_dir=settings.cache_root(),
        check_targets=check_targets,
        check_measurements=check_measurements,
        require_targets=require_targets,
        save_targets=save_targets,
        save_measurements=save_measurements,
        eval_type=eval_type.value,
        load=load,
        workload=settings.perf_workload,
        sweep=perf_sweep,
        slos=slos,
        output=output,
        save_run=save_run,
        save_run_k=save_run_k,
    )
    with paths.cache_dir_override(cache_dir):  # exports and servers' caches too, not only embeddings
        outcome = run_eval(request)
    if output:
        try:
            write_report(output, outcome.report, outcome.results, save_run_k)
        except OSError as err:  # checked before the run; this is the path changing under us
            raise InputError(f"-o {output}: cannot write the report: {err}") from None
    try:
        runs = write_runs(request, outcome)
    except OSError as err:
        raise InputError(f"--save-run {save_run}: cannot write the ranked results: {err}") from None
    out_console = Console(width=max(Console().width, 110), **PLAIN)
    render_table(outcome.report, out_console)
    if output:
        out_console.print(f"report written to {output}")
    if runs:
        out_console.print(f"ranked results written to {', '.join(map(str, runs))}", soft_wrap=True)
    if record and outcome.results and os.environ.get("DAGSTER_HOME"):
        from sie_evals.defs.evals.recording import record_report

        recorded, skipped = record_report(outcome.config, outcome.report, outcome.keys)
        if recorded:
            out_console.print(f"recorded in Dagster instance at $DAGSTER_HOME: {', '.join(recorded)}")
        for line in skipped:
            out_console.print(f"not recorded in Dagster: {line}", soft_wrap=True)
    if outcome.drift:
        failed = [
            f"{c.source}/{v['metric']} ({c.against})" for c in outcome.checks for v in c.verdicts if not v["passed"]
        ]
        err_console.print(Text.assemble(("drift:", "bold red"), f" {', '.join(failed)}"), soft_wrap=True)
        for c in outcome.checks:
            if c.diagnosis:
                err_console.print(Text(f"  {c.source} vs {c.against}: {c.diagnosis}"), soft_wrap=True)
        raise typer.Exit(1)


class DiffFormat(StrEnum):
    md = ".md"
    json = ".json"


@app.command("diff")
@_handle_errors
def diff_cmd(
    a: Annotated[
        str,
        typer.Argument(
            help="A: an `eval -o` report (report.json, or report.json#SOURCE for one of several sources), or a saved "
            "result: CONFIG#targets/<task>/<profile>/<variant> or CONFIG#measurements/<task>/<profile>/<variant>[~N] "
            "(CONFIG: a model config file or model name; ~N: N measurements before the latest).",
            show_default=False,
        ),
    ],
    b: Annotated[str, typer.Argument(help="B: the same kinds as A; deltas are B - A.", show_default=False)],
    metric: Annotated[
        str | None, typer.Option("--metric", help="Per-query metric that ranks the queries (default: main score).")
    ] = None,
    queries: Annotated[int, typer.Option("-n", "--queries", min=1, help="Queries listed each way.")] = 5,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Also write the diff as markdown (.md) or JSON (.json).")
    ] = None,
    texts: Annotated[
        bool, typer.Option("--texts/--no-texts", help="Load the task data for query and document texts.")
    ] = True,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help=f"Local data root (default ${paths.DATA_DIR_ENV}; unset = Hugging Face hub)."),
    ] = None,
) -> None:
    """What changed between two runs of the same task: metric deltas with a paired bootstrap, the queries
    that moved most both ways (relevant documents' ranks in A and B, the documents that displaced them)
    and the run conditions that differ. Exit 2 for unreadable or incomparable inputs."""
    from sie_evals.lib.core.atomic import atomic_write_json, atomic_write_text
    from sie_evals.lib.gates.diff import build_diff, render_markdown, render_terminal
    from sie_evals.lib.harness.diff_sides import read_diff_side, task_texts
    from sie_evals.lib.quality.task_types import table_metrics

    if output is not None:
        if output.suffix not in {f.value for f in DiffFormat}:
            raise InputError(f"-o {output}: give a .md (markdown) or .json file")
        paths.writable_file(output, "-o")
    side_a, side_b = (read_diff_side(x, paths.model_configs_dir()) for x in (a, b))
    task_data = task_texts(side_a, data_dir or paths.data_dir()) if texts else None
    shown = table_metrics(side_a.task_type)  # the eval table's metrics; others: all per-query ones
    diff = build_diff(side_a, side_b, task_data, metric, queries, list(shown) if shown else None)
    if output is not None:
        if output.suffix == DiffFormat.md:
            atomic_write_text(output, render_markdown(diff))
        else:
            atomic_write_json(output, diff.as_dict())
    render_terminal(diff, Console(width=max(Console().width, 120), **PLAIN))
    if output is not None:
        Console(**PLAIN).print(f"diff written to {output}", soft_wrap=True)


_LOAD_OPTIONS = {
    "rate": "--rate",
    "arrival": "--arrival",
    "burstiness": "--burstiness",
    "max_concurrency": "--max-concurrency",
    "on_cap": "--on-cap",
    "tokens": "--tokens",
    "batch_size": "--batch-size",
    "concurrency": "--concurrency",
    "duration_s": "--duration",
    "requests": "--requests",
}


def _perf_load(
    batch_size, concurrency, requests, duration, warmup, trials, rate, arrival, burstiness, max_concurrency,
    on_cap, seed, sweep, slo, tokens, perf: bool,
):  # fmt: skip
    """The perf options as a LoadSpec, a Sweep and SLOs; exit 2 naming the option on bad input."""
    from sie_evals.lib.perf.load import LoadSpec, LoadSpecError
    from sie_evals.lib.perf.sweep import parse_slo, parse_sweep

    perf_only = {"--rate": rate, "--sweep": sweep, "--slo": slo, "--tokens": tokens}
    if not perf and any(v is not None for v in perf_only.values()):
        used = [k for k, v in perf_only.items() if v is not None]
        raise InputError(f"{', '.join(used)}: perf options; add --type perf")
    perf_sweep = parse_sweep(sweep) if sweep else None
    token_values: list[int] = []
    if tokens:
        try:
            token_values = [int(t) for t in tokens.split(",")]
        except ValueError:
            raise InputError(f"--tokens {tokens!r}: expected N or N1,N2,... (integers)") from None
        if any(t < 1 for t in token_values):
            raise InputError(f"--tokens {tokens!r}: token counts must be >= 1")
        if len(token_values) > 1:
            if perf_sweep is not None:
                raise InputError("--tokens with several values is a sweep: it cannot be combined with --sweep")
            perf_sweep = parse_sweep(f"tokens={tokens}")
    try:
        load = LoadSpec(
            batch_size=batch_size or 1,
            concurrency=concurrency,
            requests=None if duration else (requests or 200),
            duration_s=duration,
            warmup_requests=warmup,
            trials=trials,
            rate=rate,
            arrival=arrival,
            burstiness=burstiness,
            max_concurrency=max_concurrency,
            on_cap=on_cap,
            seed=seed,
            tokens=token_values[0] if len(token_values) == 1 else None,
        )
    except LoadSpecError as err:
        field_name = str(err).split(":")[0]
        raise InputError(f"{_LOAD_OPTIONS.get(field_name, field_name)}{str(err)[len(field_name) :]}") from None
    if perf_sweep is not None:
        for v in perf_sweep.values:
            perf_sweep.spec_at(load, v)  # every point valid before anything starts
    slos = tuple(parse_slo(s) for s in slo or ())
    return load, perf_sweep, slos


@app.command("models")
@_handle_errors
def models_cmd() -> None:
    """List model configs with their profiles, tasks and sources."""
    for c in mc.load_all_model_configs():
        typer.echo(
            f"{c.model_id}  (name {c.short_name}; profiles {', '.join(c.profile_names)}; "
            f"tasks {', '.join(c.tasks) or '-'}; sources {', '.join(c.sources)}; file {c.path.name})"
        )


@app.command("tasks")
@_handle_errors
def tasks_cmd(
    task_type: Annotated[
        str | None, typer.Option("--type", help="Only tasks of this MTEB type (e.g. Retrieval, Clustering).")
    ] = None,
    search: Annotated[
        str | None, typer.Option("--search", help="Only tasks whose name or description contains this text.")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help=f"Data root to look for local copies (default ${paths.DATA_DIR_ENV})."),
    ] = None,
) -> None:
    """List every text task the installed mteb knows (name, type, main score, languages/subsets), which have local
    data under the data root and which a native path; plus the project's own tasks (beir/<Name> folders also work)."""
    from sie_evals.lib.tasks.registry import resolve_task_type
    from sie_evals.lib.tasks.task_listing import list_tasks

    if task_type is not None:
        task_type = resolve_task_type(task_type)
    for line in list_tasks(task_type, search, data_dir or paths.data_dir()):
        typer.echo(line)


@app.command("validate")
@_handle_errors
def validate_cmd(
    files: Annotated[list[Path] | None, typer.Argument(help="Config files (default: all).")] = None,
) -> None:
    """Validate model configs; exits 2 on the first invalid one, naming file and field."""
    from sie_evals.lib.gates.target_metrics import check_saved_metrics

    for f in files or mc.config_files():
        check_saved_metrics(mc.load_model_config(f))
        typer.echo(f"ok  {f}")


@app.command("schema")
@_handle_errors
def schema_cmd(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")] = None,
) -> None:
    """Print (or write) the JSON schema of model configs."""
    from sie_evals.lib.core.atomic import atomic_write_text

    if output:
        atomic_write_text(output, mc.json_schema_text())
    else:
        typer.echo(mc.json_schema_text(), nl=False)


@app.command("migrate")
@_handle_errors
def migrate_cmd(
    files: Annotated[list[Path] | None, typer.Argument(help="Config files (default: all).")] = None,
) -> None:
    """Rewrite saved results to the current keys (perf: engine and hardware in the key). Entries are
    moved, never dropped; an entry whose recorded conditions do not say enough stays where it is."""
    from sie_evals.lib.gates.saved_results import migrate_config

    for f in files or mc.config_files():
        moved = migrate_config(f)
        typer.echo(f"{f}: {len(moved)} entr{'y' if len(moved) == 1 else 'ies'} moved")
        for line in moved:
            typer.echo(f"  {line}")


def ui_env(environ: Any, home: Path) -> dict[str, str]:
    """The environment `sie-bench ui` runs dagster with: like scripts/main.sh, the shared data beside
    the repo and no hub access, so a backfill from a fresh clone runs offline (values already set win)."""
    env = {**environ, "DAGSTER_HOME": str(home)}
    checkout = paths.source_checkout()
    shared_data = checkout.parent / "shared" / "data" if checkout else None
    if not env.get(paths.DATA_DIR_ENV) and shared_data is not None and shared_data.is_dir():
        env[paths.DATA_DIR_ENV] = str(shared_data)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.setdefault(name, "1")
    return env


@app.command("ui")
@_handle_errors
def ui_cmd(port: Annotated[int, typer.Option("--port")] = 3000) -> None:
    """Start the Dagster UI (dagster dev) on 127.0.0.1 with DAGSTER_HOME (default $SIE_EVALS_HOME/.dagster_home:
    ./.dagster_home in a checkout). SIGTERM or Ctrl-C stops it with every process it started."""
    from sie_evals.lib.core.atomic import atomic_write_bytes

    home = paths.dagster_home()
    paths.check_dagster_home(home)  # exit 2 naming the path before Dagster starts, not its traceback
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        atomic_write_bytes(home / "dagster.yaml", paths.instance_template().read_bytes())
    env = ui_env(os.environ, home)
    workspace = str(paths.workspace_file())  # shipped in the package: an installed one needs no checkout
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", workspace, "-h", "127.0.0.1", "-p", str(port)]
    typer.echo(
        f"DAGSTER_HOME={home}\n{paths.DATA_DIR_ENV}={env.get(paths.DATA_DIR_ENV, '(unset: Hugging Face hub)')}\n"
        f"HF_HUB_OFFLINE={env['HF_HUB_OFFLINE']}\n{' '.join(cmd)}"
    )
    raise typer.Exit(_run_dagster_dev(cmd, env, home))


UI_STOP_TIMEOUT_S = 90.0  # dagster dev gives each of its children up to 60 s to stop


def _run_dagster_dev(cmd: list[str], env: dict[str, str], cwd: Path) -> int:
    """Run `dagster dev` in its own process group and stop it when we are told to stop (SIGTERM,
    SIGINT, SIGHUP unless ignored as under nohup): the group gets SIGINT, Dagster's Ctrl-C path, which
    stops its webserver, daemon and code servers. Whatever is left in the group when it exits, or after
    UI_STOP_TIMEOUT_S (or a second signal), is SIGKILLed, so nothing outlives `sie-bench ui`. Returns
    the exit code."""
    from sie_evals.lib.servers.managed import signal_group, wait_group_gone

    proc: subprocess.Popen[bytes] | None = None
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        if proc is not None:
            signal_group(proc.pid, signal.SIGINT)

    stop_signals = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        stop_signals.append(signal.SIGHUP)
    # Installed before the child starts: exec resets handled signals to their default, so dagster dev does
    # not inherit an ignored SIGINT (a `sie-bench ui &` in a script), under which it ignores SIGTERM too.
    previous = {s: signal.signal(s, forward) for s in stop_signals}
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True)
        if received:  # a signal that came while it was starting
            signal_group(proc.pid, signal.SIGINT)
        deadline: float | None = None
        while True:
            try:
                returncode = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if received and deadline is None:
                    deadline = time.monotonic() + UI_STOP_TIMEOUT_S
                if deadline is not None and (time.monotonic() > deadline or len(received) > 1):
                    signal_group(proc.pid, signal.SIGKILL)
    finally:
        if proc is not None:
            signal_group(proc.pid, signal.SIGKILL)  # what dagster dev left behind
            wait_group_gone(proc.pid, timeout_s=10.0)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        err_console.print(f"{signal.Signals(received[0]).name}: dagster dev stopped")
        return 128 + received[0]
    return returncode if returncode >= 0 else 128 - returncode


servers_app = typer.Typer(help="Inference servers the harness starts itself (sie, infinity).", no_args_is_help=True)
app.add_typer(servers_app, name="servers")


class InstallableServer(StrEnum):
    sie = "sie"
    infinity = "infinity"
    all = "all"


@servers_app.command("install")
@_handle_errors
def servers_install_cmd(
    server: Annotated[InstallableServer, typer.Argument(help="Which server venv to provision.")],
    force: Annotated[bool, typer.Option("--force", help="Reinstall even if already provisioned.")] = False,
) -> None:
    """Provision a server's own venv in the cache (idempotent; SIE_EVALS_SERVERS_DIR overrides where)."""
    from sie_evals.lib.servers import install

    names = list(install.PACKAGES) if server == InstallableServer.all else [server.value]
    for name in names:
        install.install(name, force=force, echo=lambda line: typer.echo(line, err=True))


@servers_app.command("status")
@_handle_errors
def servers_status_cmd() -> None:
    """Show where each server venv is and whether it is provisioned."""
    from sie_evals.lib.servers import install, tei

    for name, pkg in install.PACKAGES.items():
        state = "provisioned" if install.installed(name) else "not provisioned"
        typer.echo(f"{name}: {pkg.executable} {pkg.version} in {install.home(name)}: {state}")
    typer.echo(f"tei: {tei.EXECUTABLE} {'on PATH' if tei.available() else 'not on PATH (not installable here)'}")


def _register_loadtest() -> None:
    from sie_evals.loadtest_cli import loadtest_cmd

    app.command("loadtest")(_handle_errors(loadtest_cmd))


_register_loadtest()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
