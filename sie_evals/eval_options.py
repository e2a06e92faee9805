"""The options of `sie-bench eval`, one annotated type each, so the command's signature is one line
per option, and how they become one EvalRequest over the SIE_EVALS_* settings. Help texts of options
backed by a settings field (lib/config/settings.py) are generated from the field: its description and
the default in force; drift margins come from lib/gates/thresholds.py."""

import dataclasses
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sie_evals.cli_sources import server_urls
from sie_evals.lib.config.settings import DEFAULTS, field_help
from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.sources import ALL_SOURCES
from sie_evals.lib.gates.thresholds import Against, MetricKind, default_margin_rules

if TYPE_CHECKING:
    from sie_evals.lib.config.settings import EvalDefaults
    from sie_evals.lib.harness.eval_run import EvalRequest


class EvalType(StrEnum):
    quality = "quality"
    perf = "perf"


def _opt(field: str, *flags: str, **kw: object) -> typer.models.OptionInfo:
    """An option whose help and default come from the settings field (unset here: the environment's)."""
    return typer.Option(*flags, help=field_help(field), show_default=False, **kw)  # type: ignore[arg-type]


_KINDS = tuple(MetricKind)

Model = Annotated[str, typer.Argument(help="Model id (org/name), short name, or config file stem.")]
Task = Annotated[
    str,
    typer.Option(
        "-t",
        "--task",
        help="Task id, e.g. beir/SciFact (alias mteb/SciFact), beir/<Name> for any BEIR folder under the data "
        "root, or mteb/<TaskName> (mteb/<TaskName>/<subset>) for any text task of the installed mteb.",
    ),
]
Type = Annotated[EvalType, typer.Option("--type", help="quality (retrieval metrics) or perf.")]
Sources = Annotated[
    str | None,
    typer.Option(
        "-s",
        "--sources",
        help="Comma-separated sources, one report column each: " + ", ".join(ALL_SOURCES) + ". "
        "Default: the first source listed in the model config's `sources` (local in the shipped config).",
        show_default=False,
    ),
]
Profile = Annotated[str | None, _opt("profile", "-p", "--profile")]
BatchSize = Annotated[
    int | None,
    typer.Option(
        "-b",
        "--batch-size",
        min=1,
        help="quality: items per forward pass (default: the profile's batch_size); perf: items per request "
        f"(default {DEFAULTS['perf_batch_size']}). Env: SIE_EVALS_BATCH_SIZE / SIE_EVALS_PERF_BATCH_SIZE.",
    ),
]
Threads = Annotated[int | None, _opt("threads", "--threads", min=1)]
Device = Annotated[str | None, _opt("device", "--device")]
OpenaiModel = Annotated[
    str | None,
    typer.Option("--openai-model", help="Source openai: the request's model (default: profile's openai_model)."),
]
Split = Annotated[str | None, _opt("split", "--split")]
LimitQueries = Annotated[int | None, _opt("limit_queries", "--limit-queries", min=1)]
CorpusSize = Annotated[int | None, _opt("corpus_size", "--corpus-size", min=1)]
Concurrency = Annotated[int | None, _opt("perf_concurrency", "-c", "--concurrency", min=1)]
Workload = Annotated[str | None, _opt("perf_workload", "--workload")]
Requests = Annotated[int | None, _opt("perf_requests", "--requests", min=1)]
Duration = Annotated[float | None, _opt("perf_duration_s", "--duration", min=0.1)]
Warmup = Annotated[int | None, _opt("perf_warmup_requests", "--warmup", min=0)]
Trials = Annotated[int | None, _opt("perf_trials", "--trials", min=1)]
Rate = Annotated[float | None, _opt("perf_rate", "--rate")]
Arrival = Annotated[str | None, _opt("perf_arrival", "--arrival")]
Burstiness = Annotated[float | None, _opt("perf_burstiness", "--burstiness")]
MaxConcurrency = Annotated[int | None, _opt("perf_max_concurrency", "--max-concurrency")]
OnCap = Annotated[str | None, _opt("perf_on_cap", "--on-cap")]
Seed = Annotated[int | None, _opt("perf_seed", "--seed")]
Sweep = Annotated[str | None, _opt("perf_sweep", "--sweep")]
Slo = Annotated[list[str] | None, _opt("perf_slos", "--slo")]
Tokens = Annotated[str | None, _opt("perf_tokens", "--tokens")]
CheckTargets = Annotated[
    bool,
    typer.Option(
        "--check-targets",
        help="Exit 1 if a metric drifts past its target's margin "
        f"(by default {default_margin_rules(Against.targets, _KINDS)}; "
        "a model config's `margins:` overrides these).",
    ),
]
CheckMeasurements = Annotated[
    bool,
    typer.Option(
        "--check-measurements",
        help="Same against the latest saved measurement "
        f"(by default {default_margin_rules(Against.measurements, _KINDS)}).",
    ),
]
RequireTargets = Annotated[
    bool,
    typer.Option(
        "--require-targets", help="A missing target/measurement fails the check (default: reported as 'no target')."
    ),
]
SaveTargets = Annotated[
    str | None,
    typer.Option(
        "--save-targets",
        metavar="SOURCE",
        help="Save SOURCE's results as the targets for this task, profile and data variant in the model config.",
    ),
]
SaveMeasurements = Annotated[
    str | None,
    typer.Option(
        "--save-measurements",
        metavar="SOURCE",
        help="Append SOURCE's results to the model config's measurement history.",
    ),
]
Output = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        help="Write the JSON report here (and per-query Parquet and, for retrieval, the top-k ranking beside it).",
    ),
]
SaveRun = Annotated[
    Path | None,
    typer.Option(
        "--save-run",
        metavar="PATH",
        help="Retrieval: write the ranked results as a TREC run (PATH) and Parquet (PATH with suffix .parquet); "
        "with several computed sources, PATH gets .<source> before its suffix.",
    ),
]
SaveRunK = Annotated[
    int, typer.Option("--save-run-k", min=1, help="Documents per query in --save-run, -o and saved results' rankings.")
]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help=f"Local data root (default ${paths.DATA_DIR_ENV}; unset = Hugging Face hub)."),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help=f"Cache root for this run: embeddings and ONNX/OpenVINO exports "
        f"(default ${paths.CACHE_DIR_ENV} or ~/.cache/sie-evals).",
    ),
]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
Record = Annotated[
    bool,
    typer.Option("--record/--no-record", help="Record the result in the Dagster instance when DAGSTER_HOME is set."),
]
Backend = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="native (this project's implementation) or mteb (MTEB's task code and evaluators); "
        "default: native where it exists, else mteb.",
    ),
]
ResultsRepo = Annotated[
    Path | None,
    typer.Option(
        "--results-repo",
        help="Local copy of MTEB's results repository (results/<org>__<model>/<revision>/<Task>.json) for the "
        "benchmark source (default $SIE_EVALS_RESULTS_REPO).",
    ),
]


def eval_settings(p: dict[str, Any]) -> "EvalDefaults":
    """`eval`'s options over the SIE_EVALS_* environment: the one settings model (CLI and Dagster)."""
    from sie_evals.lib.config.settings import eval_defaults

    perf = p["eval_type"] == EvalType.perf
    if p["workload"] is not None and p["workload"] not in ("corpus", "queries"):
        raise InputError(f"--workload must be corpus or queries, got {p['workload']!r}")
    perf_only = {"--rate": p["rate"], "--sweep": p["sweep"], "--slo": p["slo"] or None, "--tokens": p["tokens"]}
    if not perf and any(v is not None for v in perf_only.values()):
        used = [k for k, v in perf_only.items() if v is not None]
        raise InputError(f"{', '.join(used)}: perf options; add --type perf")
    if p["requests"] and p["duration"]:
        raise InputError("give --requests or --duration, not both")
    options = {name: p[option] for name, option in _SETTINGS_OPTIONS.items()}
    if p["duration"] is not None:  # an explicit --duration wins over SIE_EVALS_PERF_REQUESTS
        options["perf_requests"] = DEFAULTS["perf_requests"]
    settings = eval_defaults(
        data_dir=str(p["data_dir"]) if p["data_dir"] else None,
        cache_dir=str(p["cache_dir"]) if p["cache_dir"] else None,
        **options,
        batch_size=None if perf else p["batch_size"],
        perf_batch_size=p["batch_size"] if perf else None,
        perf_slos=",".join(p["slo"]) if p["slo"] else None,
    )
    if settings.corpus_size and not settings.limit_queries:
        raise InputError("--corpus-size only applies together with --limit-queries")
    return settings


# settings field -> the eval option that sets it (batch size, paths and SLOs are mapped in eval_settings)
_SETTINGS_OPTIONS = {
    **{n: n for n in ("profile", "split", "limit_queries", "corpus_size", "threads", "device")},
    **{f"perf_{n}": n for n in ("workload", "concurrency", "requests", "trials", "rate", "arrival", "burstiness")},
    **{f"perf_{n}": n for n in ("max_concurrency", "on_cap", "seed", "sweep", "tokens")},
    "perf_duration_s": "duration",
    "perf_warmup_requests": "warmup",
}


def eval_request(p: dict[str, Any]) -> "EvalRequest":
    """The options as one EvalRequest; exit 2 naming the option (or variable) on bad input."""
    from sie_evals.lib.config.settings import perf_plan
    from sie_evals.lib.harness.eval_run import EvalRequest, parse_sources
    from sie_evals.lib.harness.evaluation import DataOptions, EngineOptions

    if p["results_repo"] is not None:  # read by the benchmark source (lib/gates/benchmark_scores.py)
        if not (p["results_repo"] / "results").is_dir():
            raise InputError(
                f"--results-repo {p['results_repo']}: no results/ folder (MTEB's results repository layout)"
            )
        os.environ["SIE_EVALS_RESULTS_REPO"] = str(p["results_repo"])
    perf = p["eval_type"] == EvalType.perf
    s = eval_settings(p)
    plan = perf_plan(s)  # validated for a quality eval too; only a perf eval runs a sweep or SLOs
    if not perf:
        plan = dataclasses.replace(plan, sweep=None, slos=())
    checks_or_saves = ("save_targets", "save_measurements", "check_targets", "check_measurements")
    if plan.sweep is not None and any(p[k] for k in checks_or_saves):
        raise InputError("--sweep: saving or checking targets applies to one load shape, not a sweep")
    engine = EngineOptions(
        batch_size=s.perf_batch_size if perf else s.batch_size,
        threads=s.threads,
        progress=p["progress"] and sys.stderr.isatty(),
        device=s.device,
        server_urls=server_urls(p),  # --<source>-url / --server-url (cli_sources.py)
        openai_model=p["openai_model"],
    )
    return EvalRequest(
        model=p["model"],
        task=p["task"],
        sources=parse_sources(p["sources"]),
        profile=s.profile,
        data=DataOptions(s.split, s.limit_queries, s.corpus_size, s.data_root(), p["backend"]),
        engine=engine,
        cache_dir=s.cache_root(),
        **{k: p[k] for k in ("check_targets", "check_measurements", "require_targets", "save_targets")},
        **{k: p[k] for k in ("save_measurements", "output", "save_run", "save_run_k")},
        eval_type=p["eval_type"].value,
        load=plan.load,
        workload=s.perf_workload,
        sweep=plan.sweep,
        slos=plan.slos,
    )
