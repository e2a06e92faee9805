"""`sie-bench`: run evals from the command line.

Exit codes: 0 success, 1 failure (an engine or eval failed), 2 usage or input error (bad config,
dataset, unknown model/task/source).
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

from sie_evals.lib import model_config as mc
from sie_evals.lib import paths
from sie_evals.lib.errors import InputError, SieEvalsError, UnknownNameError
from sie_evals.lib.sources import ALL_SOURCES, COMPUTE_SOURCES

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
            err_console.print(f"[bold red]error:[/] {err}", markup=True, highlight=False)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _parse_sources(sources: str) -> list[str]:
    names = [s.strip() for s in sources.split(",") if s.strip()]
    if not names:
        raise InputError("--sources is empty")
    for s in names:
        if s not in ALL_SOURCES:
            raise UnknownNameError("source", s, list(ALL_SOURCES))
    if len(set(names)) != len(names):
        raise InputError(f"--sources lists a source twice: {sources}")
    return names


@app.command("eval")
@_handle_errors
def eval_cmd(
    model: Annotated[str, typer.Argument(help="Model id (org/name), short name, or config file stem.")],
    task: Annotated[
        str,
        typer.Option(
            "-t",
            "--task",
            help="Task id, e.g. beir/SciFact (alias mteb/SciFact), "
            "or beir/<Name> for any BEIR folder under the data root.",
        ),
    ],
    eval_type: Annotated[
        EvalType, typer.Option("--type", help="quality (retrieval metrics) or perf.")
    ] = EvalType.quality,
    sources: Annotated[
        str, typer.Option("-s", "--sources", help="Comma-separated sources: " + ", ".join(ALL_SOURCES) + ".")
    ] = "local",
    profile: Annotated[
        str, typer.Option("-p", "--profile", help="Profile from the model config.")
    ] = mc.DEFAULT_PROFILE,
    batch_size: Annotated[
        int | None,
        typer.Option("-b", "--batch-size", min=1, help="Items per forward pass/request (default: profile's)."),
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Torch threads for the local engine.")] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Dataset split (default: the task's, e.g. test).")
    ] = None,
    limit_queries: Annotated[
        int | None, typer.Option("--limit-queries", min=1, help="Deterministic subset: this many queries...")
    ] = None,
    corpus_size: Annotated[
        int | None,
        typer.Option(
            "--corpus-size",
            min=1,
            help="...and a corpus of their relevant docs filled up to this size by a fixed sample (default 1000).",
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
) -> None:
    """Evaluate MODEL on a task with one or more sources and print a metrics table."""
    from sie_evals.lib.cache import EmbeddingCache
    from sie_evals.lib.evaluation import DataOptions, EngineOptions, evaluate_source, load_task
    from sie_evals.lib.report import build_report, render_table, write_report

    if corpus_size and not limit_queries:
        raise InputError("--corpus-size only applies together with --limit-queries")
    if eval_type is EvalType.perf:
        raise InputError("--type perf is not implemented in this version (quality only)")
    source_list = _parse_sources(sources)
    reference = [s for s in source_list if s not in COMPUTE_SOURCES]
    if reference:
        raise InputError(
            f"reference source(s) {', '.join(reference)} are not implemented in this version; "
            f"compute sources: {', '.join(COMPUTE_SOURCES)}"
        )
    config = mc.find_model_config(model)
    resolved = config.resolve_profile(profile)
    spec, data = load_task(task, DataOptions(split, limit_queries, corpus_size, data_dir))
    cache = EmbeddingCache(cache_dir or paths.cache_dir())
    engine_opts = EngineOptions(batch_size=batch_size, threads=threads, progress=progress and sys.stderr.isatty())
    results = [evaluate_source(config, resolved, spec, data, s, engine_opts, cache) for s in source_list]
    report = build_report(config.model_id, resolved.name, spec, data, results)
    if output:
        write_report(output, report, results)
    render_table(report)
    if output:
        Console().print(f"report written to {output}")
    if record and os.environ.get("DAGSTER_HOME"):
        from sie_evals.defs.evals.recording import record_quality_report

        keys = record_quality_report(config, report)
        Console().print(f"recorded in Dagster instance at $DAGSTER_HOME: {', '.join(keys)}")


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
    from sie_evals.lib.tasks.registry import _REGISTERED

    for spec in _REGISTERED:
        aliases = f" (alias {', '.join(spec.aliases)})" if spec.aliases else ""
        typer.echo(
            f"{spec.task_id}{aliases}: {spec.type}, splits {', '.join(spec.rules.eval_splits)}, "
            f"main score {spec.rules.main_score}, data {spec.local_dir}/ or hf:{spec.hf_dataset}"
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
    from sie_evals.lib.atomic import atomic_write_text

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


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
