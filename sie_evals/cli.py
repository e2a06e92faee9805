"""`sie-bench`: run evals from the command line.

Exit codes: 0 success, 1 drift (a --check-* failed) or an engine/eval failure, 2 usage or input
error (bad config, dataset, result file, unknown model/task/source).
"""

import functools
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

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
err_console = Console(stderr=True)


class EvalType(StrEnum):
    quality = "quality"
    perf = "perf"


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SieEvalsError as err:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
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
            help="Task id, e.g. beir/SciFact (alias mteb/SciFact), or beir/<Name> for any "
            "BEIR folder under the data root.",
        ),
    ],
    eval_type: Annotated[
        EvalType, typer.Option("--type", help="quality (retrieval metrics) or perf.")
    ] = EvalType.quality,
    sources: Annotated[
        str,
        typer.Option(
            "-s", "--sources", help="Comma-separated sources, one report column each: " + ", ".join(ALL_SOURCES) + "."
        ),
    ] = "local",
    profile: Annotated[
        str, typer.Option("-p", "--profile", help="Profile from the model config.")
    ] = mc.DEFAULT_PROFILE,
    batch_size: Annotated[
        int | None,
        typer.Option("-b", "--batch-size", min=1, help="Items per forward pass/request (default: profile's)."),
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
        int, typer.Option("-c", "--concurrency", min=1, help="perf: concurrent closed-loop clients.")
    ] = 16,
    workload: Annotated[
        str, typer.Option("--workload", help="perf: encode the task's corpus (documents) or its queries.")
    ] = "corpus",
    requests: Annotated[
        int | None, typer.Option("--requests", min=1, help="perf: counted requests per trial (default 200).")
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", min=0.1, help="perf: seconds per trial instead of --requests.")
    ] = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="perf: warm-up requests per trial.")] = 16,
    trials: Annotated[int, typer.Option("--trials", min=1, help="perf: repeated trials (median reported).")] = 3,
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
        typer.Option("-o", "--output", help="Write the JSON report here (and per-query Parquet beside it)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help=f"Local data root (default ${paths.DATA_DIR_ENV}; unset = Hugging Face hub)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help=f"Embedding cache (default ${paths.CACHE_DIR_ENV} or ~/.cache/sie-evals)."),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    record: Annotated[
        bool,
        typer.Option(
            "--record/--no-record", help="Record the result in the Dagster instance when DAGSTER_HOME is set."
        ),
    ] = True,
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

    Exit codes: 0 pass, 1 drift (a check failed) or an engine failure, 2 usage or input error."""
    from sie_evals.lib.harness.eval_run import EvalRequest, parse_sources, run_eval
    from sie_evals.lib.harness.evaluation import DataOptions, EngineOptions
    from sie_evals.lib.harness.report import render_table, write_report

    if corpus_size and not limit_queries:
        raise InputError("--corpus-size only applies together with --limit-queries")
    from sie_evals.lib.perf.load import LoadSpec

    if workload not in ("corpus", "queries"):
        raise InputError(f"--workload must be corpus or queries, got {workload!r}")
    if requests and duration:
        raise InputError("give --requests or --duration, not both")
    load = LoadSpec(
        batch_size=batch_size or 1,
        concurrency=concurrency,
        requests=None if duration else (requests or 200),
        duration_s=duration,
        warmup_requests=warmup,
        trials=trials,
    )
    request = EvalRequest(
        model=model,
        task=task,
        sources=parse_sources(sources),
        profile=profile,
        data=DataOptions(split, limit_queries, corpus_size, data_dir),
        engine=EngineOptions(
            batch_size=batch_size,
            threads=threads,
            progress=progress and sys.stderr.isatty(),
            device=device,
            sie_url=sie_url,
            infinity_url=infinity_url,
            tei_url=tei_url,
            openai_url=openai_url,
            openai_model=openai_model,
        ),
        cache_dir=cache_dir,
        check_targets=check_targets,
        check_measurements=check_measurements,
        require_targets=require_targets,
        save_targets=save_targets,
        save_measurements=save_measurements,
        eval_type=eval_type.value,
        load=load,
        workload=workload,
    )
    outcome = run_eval(request)
    if output:
        write_report(output, outcome.report, outcome.results)
    render_table(outcome.report, Console(width=max(Console().width, 110)))
    if output:
        Console().print(f"report written to {output}")
    if record and outcome.results and os.environ.get("DAGSTER_HOME"):
        from sie_evals.defs.evals.recording import record_quality_report

        keys = record_quality_report(outcome.config, outcome.report)
        Console().print(f"recorded in Dagster instance at $DAGSTER_HOME: {', '.join(keys)}")
    if outcome.drift:
        failed = [
            f"{c.source}/{v['metric']} ({c.against})" for c in outcome.checks for v in c.verdicts if not v["passed"]
        ]
        err_console.print(f"[bold red]drift:[/] {escape(', '.join(failed))}", soft_wrap=True)
        raise typer.Exit(1)


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
def tasks_cmd() -> None:
    """List registered tasks (any beir/<Name> folder under the data root also works)."""
    from sie_evals.lib.tasks.registry import registered_tasks

    for spec in registered_tasks():
        aliases = f" (alias {', '.join(spec.aliases)})" if spec.aliases else ""
        typer.echo(
            f"{spec.task_id}{aliases}: {spec.type}, splits {', '.join(spec.rules.eval_splits)}, "
            f"main score {spec.rules.main_score}, data {spec.local_dir}/"
            + (f" or hf:{spec.hf_dataset}" if spec.hf_dataset else "")
        )


@app.command("validate")
@_handle_errors
def validate_cmd(
    files: Annotated[list[Path] | None, typer.Argument(help="Config files (default: all).")] = None,
) -> None:
    """Validate model configs; exits 2 on the first invalid one, naming file and field."""
    for f in files or mc.config_files():
        mc.load_model_config(f)
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


@app.command("ui")
@_handle_errors
def ui_cmd(port: Annotated[int, typer.Option("--port")] = 3000) -> None:
    """Start the Dagster UI (dagster dev) on 127.0.0.1 with DAGSTER_HOME (default ./.dagster_home)."""
    home = Path(os.environ.get("DAGSTER_HOME") or paths.REPO_ROOT / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(paths.REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-w",
        str(paths.REPO_ROOT / "workspace.yaml"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    typer.echo(f"DAGSTER_HOME={home}\n{' '.join(cmd)}")
    raise typer.Exit(subprocess.call(cmd, env=env, cwd=paths.REPO_ROOT))


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


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
