"""`sie-bench`: run evals from the command line.

Exit codes: 0 success, 1 drift (a --check-* failed) or an engine/eval failure, 2 usage or input
error (bad config, dataset, result file, unknown model/task/source).
"""

import functools
import logging
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from sie_evals import eval_options as o
from sie_evals.cli_sources import server_url_options
from sie_evals.lib.config import model_config as mc
from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import InputError, SieEvalsError
from sie_evals.lib.servers import install
from sie_evals.ui_cli import run_dagster_dev, ui_env

if TYPE_CHECKING:
    from sie_evals.lib.gates.drift import CheckResult
    from sie_evals.lib.harness.eval_run import EvalOutcome, EvalRequest

app = typer.Typer(
    help="Benchmark-driven development for text-embedding models and inference servers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Paths and user text print literally: no markup, no emoji codes (`corpus.jsonl:100:` is not 💯).
PLAIN = {"emoji": False, "markup": False, "highlight": False}
err_console = Console(stderr=True, **PLAIN)
EvalType = o.EvalType  # the eval command's --type (kept importable from here)


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
@server_url_options  # --<source>-url for every source that takes one (lib/core/sources.py), --server-url
@_handle_errors
def eval_cmd(
    ctx: typer.Context,
    model: o.Model,
    task: o.Task,
    eval_type: o.Type = o.EvalType.quality,
    sources: o.Sources = None,
    profile: o.Profile = None,
    batch_size: o.BatchSize = None,
    threads: o.Threads = None,
    device: o.Device = None,
    split: o.Split = None,
    limit_queries: o.LimitQueries = None,
    corpus_size: o.CorpusSize = None,
    concurrency: o.Concurrency = None,
    workload: o.Workload = None,
    requests: o.Requests = None,
    duration: o.Duration = None,
    warmup: o.Warmup = None,
    trials: o.Trials = None,
    check_targets: o.CheckTargets = False,
    check_measurements: o.CheckMeasurements = False,
    require_targets: o.RequireTargets = False,
    save_targets: o.SaveTargets = None,
    save_measurements: o.SaveMeasurements = None,
    output: o.Output = None,
    save_run: o.SaveRun = None,
    save_run_k: o.SaveRunK = 100,
    data_dir: o.DataDir = None,
    cache_dir: o.CacheDir = None,
    progress: o.Progress = True,
    record: o.Record = True,
    rate: o.Rate = None,
    arrival: o.Arrival = None,
    burstiness: o.Burstiness = None,
    max_concurrency: o.MaxConcurrency = None,
    on_cap: o.OnCap = None,
    seed: o.Seed = None,
    sweep: o.Sweep = None,
    slo: o.Slo = None,
    tokens: o.Tokens = None,
    backend: o.Backend = None,
    results_repo: o.ResultsRepo = None,
    openai_model: o.OpenaiModel = None,
) -> None:
    """Evaluate MODEL on a task with one or more sources and print a metrics table.

    Every option without a value takes its default from SIE_EVALS_<FIELD> (lib/config/settings.py),
    the same settings the Dagster resource uses. A check with nothing saved prints a WARN and passes
    unless --require-targets. Exit codes: 0 pass, 1 drift (a check failed) or an engine failure, 2
    usage or input error."""
    from sie_evals.lib.harness.eval_run import run_eval

    request = o.eval_request(ctx.params)
    with paths.cache_dir_override(cache_dir):  # exports and servers' caches too, not only embeddings
        outcome = run_eval(request)
    _print_outcome(request, outcome, record)
    if outcome.drift:
        _print_drift(outcome.checks)
        raise typer.Exit(1)


def _print_outcome(request: "EvalRequest", outcome: "EvalOutcome", record: bool) -> None:
    """Write -o and --save-run files, print the table, record in Dagster when DAGSTER_HOME is set."""
    from sie_evals.lib.harness.eval_run import write_runs
    from sie_evals.lib.harness.report import render_table, write_report

    if request.output:
        try:
            write_report(request.output, outcome.report, outcome.results, request.save_run_k)
        except OSError as err:  # checked before the run; this is the path changing under us
            raise InputError(f"-o {request.output}: cannot write the report: {err}") from None
    try:
        runs = write_runs(request, outcome)
    except OSError as err:
        raise InputError(f"--save-run {request.save_run}: cannot write the ranked results: {err}") from None
    out_console = Console(width=max(Console().width, 110), **PLAIN)
    render_table(outcome.report, out_console)
    if request.output:
        out_console.print(f"report written to {request.output}")
    if runs:
        out_console.print(f"ranked results written to {', '.join(map(str, runs))}", soft_wrap=True)
    if record and outcome.results and os.environ.get("DAGSTER_HOME"):
        from sie_evals.defs.evals.recording import record_report

        recorded, skipped = record_report(outcome.config, outcome.report, outcome.keys)
        if recorded:
            out_console.print(f"recorded in Dagster instance at $DAGSTER_HOME: {', '.join(recorded)}")
        for line in skipped:
            out_console.print(f"not recorded in Dagster: {line}", soft_wrap=True)


def _print_drift(checks: "list[CheckResult]") -> None:
    failed = [f"{c.source}/{v['metric']} ({c.against})" for c in checks for v in c.verdicts if not v["passed"]]
    err_console.print(Text.assemble(("drift:", "bold red"), f" {', '.join(failed)}"), soft_wrap=True)
    for c in checks:
        if c.diagnosis:
            err_console.print(Text(f"  {c.source} vs {c.against}: {c.diagnosis}"), soft_wrap=True)


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
    raise typer.Exit(run_dagster_dev(cmd, env, home, err_console.print))


servers_app = typer.Typer(help="Inference servers the harness starts itself (sie, infinity).", no_args_is_help=True)
app.add_typer(servers_app, name="servers")


# Every source with an install recipe in the source table (lib/core/sources.py), and `all`.
InstallableServer = StrEnum("InstallableServer", [(n, n) for n in [*install.PACKAGES, "all"]])  # type: ignore[misc]


@servers_app.command("install")
@_handle_errors
def servers_install_cmd(
    server: Annotated[InstallableServer, typer.Argument(help="Which server venv to provision.")],
    force: Annotated[bool, typer.Option("--force", help="Reinstall even if already provisioned.")] = False,
) -> None:
    """Provision a server's own venv in the cache (idempotent; SIE_EVALS_SERVERS_DIR overrides where)."""
    names = list(install.PACKAGES) if server == InstallableServer.all else [server.value]
    for name in names:
        install.install(name, force=force, echo=lambda line: typer.echo(line, err=True))


@servers_app.command("status")
@_handle_errors
def servers_status_cmd() -> None:
    """Show where each server venv is and whether it is provisioned."""
    from sie_evals.lib.servers import tei

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
