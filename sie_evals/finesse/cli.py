"""The `finesse` command: init, generate, score, checksum, verify, gate.

Exit codes: 0 ok, 1 a check failed (hash, signature, re-score mismatch) or an engine failed, 2 bad input."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from sie_evals.lib.core.errors import InputError, SieEvalsError

app = typer.Typer(
    help="Finesse long-context embedding benchmark (RSS and SRS), exact to finesse-benchmark 0.18.9's scoring.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Paths and user text print literally: no markup, no emoji codes (`corpus.jsonl:100:` is not 💯).
out = Console(emoji=False, markup=False, highlight=False)
err = Console(stderr=True, emoji=False, markup=False, highlight=False)


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SieEvalsError as e:
            err.print(Text.assemble(("error:", "bold red"), f" {e}"), soft_wrap=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


@app.command("init")
@_handle_errors
def init_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the config.")] = Path("benchmark.yaml"),
    leaderboard: Annotated[bool, typer.Option("--leaderboard", help="The official leaderboard settings.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented, validated config template (or the leaderboard settings)."""
    from ruamel.yaml import YAML

    from sie_evals.finesse.config import TEMPLATE, leaderboard_template, parse_config
    from sie_evals.lib.core.atomic import atomic_write_text

    text = leaderboard_template() if leaderboard else TEMPLATE
    parse_config(YAML(typ="safe", pure=True).load(text), "template")  # never write an invalid template
    if output.exists() and not force:
        raise InputError(f"{output} exists; pass --force to overwrite")
    atomic_write_text(output, text)
    out.print(f"wrote {output}")


@app.command("generate")
@_handle_errors
def generate_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Finesse config YAML.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("results"),
    samples: Annotated[int | None, typer.Option("--samples", min=1, help="Override samples_per_length.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the seed.")] = None,
    dataset_path: Annotated[
        list[Path] | None,
        typer.Option(
            "--dataset-path",
            help="Local files (jsonl/json/parquet/txt) to use instead of the datasets, or ONE folder holding a local "
            "copy of the Hugging Face dataset the config names (its data_files / data_dir resolved inside it).",
        ),
    ] = None,
    text_column: Annotated[
        str | None,
        typer.Option("--text-column", help="Text field (default: 'text' for files, the config's for a folder)."),
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Torch threads (local engine).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    sampler: Annotated[
        str | None,
        typer.Option("--sampler", help="sie-evals (same texts for every model) | finesse-0.18.9 (leaderboard draws)."),
    ] = None,
) -> None:
    """Draw seeded probes, embed them in the configured mode, write one safetensors file."""
    from sie_evals.finesse.config import load_config, parse_config
    from sie_evals.finesse.probes.generate import generate
    from sie_evals.finesse.probes.sampling import local_dataset_copy

    cfg = load_config(config)
    data = cfg.model_dump(mode="json")
    if samples:
        data["probe_config"]["samples_per_length"] = samples
    if seed is not None:
        data["seed"] = seed
    if threads:
        data["advanced"]["threads"] = threads
    if sampler is not None:
        data["sampler"] = sampler
    if dataset_path and len(dataset_path) == 1 and dataset_path[0].is_dir():
        data["datasets"] = local_dataset_copy(cfg.datasets, dataset_path[0], text_column)
    elif dataset_path:
        files = [str(p.resolve()) for p in dataset_path]
        data["datasets"] = [{"local_files": files, "text_column": text_column or "text"}]
    cfg = parse_config(data, str(config))
    path = generate(cfg, output, config.resolve().parent, progress=progress and sys.stderr.isatty())
    out.print(f"embeddings written to {path}")


@app.command("score")
@_handle_errors
def score_cmd(
    pt_path: Annotated[Path, typer.Option("--pt-path", help="Embeddings file from generate (or a legacy .pt).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("results"),
    final_formula: Annotated[
        str | None, typer.Option("--final-formula", help="sum | balanced (default: the config's).")
    ] = None,
) -> None:
    """Score an embeddings file; writes benchmark_results.json (hashed, and signed when FINESSE_HMAC_KEY is set)."""
    from sie_evals.finesse.results import score_file

    if final_formula not in (None, "sum", "balanced"):
        raise InputError(f"--final-formula must be sum or balanced, got {final_formula!r}")
    path, results = score_file(pt_path, output, final_formula)
    out.print(f"results written to {path}")
    if results["metric"] == "srs":
        out.print(f"average_srs ({results['formula']}): {results['average_srs']}, average_pbi {results['average_pbi']}")
    else:
        out.print(f"average_rss ({results['final_formula']}, {results['formula']}): {results['average_rss']}")
    for length, entry in results["length_scores"].items():
        st = entry["stats"]
        if st["n"]:
            ci = f" CI95 [{st['ci95_low']}, {st['ci95_high']}]" if st["ci95_low"] is not None else ""
            out.print(f"  L={length}: mean {st['mean']} (n={st['n']}, std {st['std']}){ci}")
    for length, reason in results["skipped_lengths"].items():
        out.print(f"  L={length}: skipped ({reason})")
    if not results["signature"]:
        out.print("unsigned (set FINESSE_HMAC_KEY to sign)")


LEGACY_HELP = (
    "Accept a finesse-benchmark results file (unkeyed legacy hash, no signature) even when FINESSE_HMAC_KEY is set."
)


def _print_report(report: Any) -> None:
    for c in report.checked:
        out.print(f"checked: {c}")
    for n in report.notes:
        out.print(f"note: {n}")
    for p in report.problems:
        err.print(Text.assemble(("MISMATCH", "bold red"), f" {p}"), soft_wrap=True)
    if report.ok:
        out.print(Text("OK", "green"))
    else:
        raise typer.Exit(1)


@app.command("checksum")
@_handle_errors
def checksum_cmd(
    json_path: Annotated[Path, typer.Option("--json-path", help="benchmark_results.json")],
    model_path: Annotated[
        Path | None, typer.Option("--model-path", help="Model folder/file to check against the stored model hash.")
    ] = None,
    legacy: Annotated[bool, typer.Option("--legacy", help=LEGACY_HELP)] = False,
) -> None:
    """Recompute the content hash (and signature, and model hash); exit 1 naming any mismatch."""
    from sie_evals.finesse.results import checksum, load_results

    _print_report(checksum(load_results(json_path), model_path, allow_legacy=legacy))


@app.command("verify")
@_handle_errors
def verify_cmd(
    json_path: Annotated[Path, typer.Option("--json-path", help="benchmark_results.json")],
    pt_path: Annotated[Path, typer.Option("--pt-path", help="The embeddings file the results came from.")],
    legacy: Annotated[bool, typer.Option("--legacy", help=LEGACY_HELP)] = False,
) -> None:
    """Checksum, then re-score the embeddings file and compare everything; exit 1 naming what differs."""
    from sie_evals.finesse.results import load_results, verify

    _print_report(verify(load_results(json_path), pt_path, allow_legacy=legacy))


@app.command("gate")
@_handle_errors
def gate_cmd(
    json_path: Annotated[Path, typer.Option("--json-path", help="benchmark_results.json (checksum must pass).")],
    model: Annotated[
        str | None, typer.Option("--model", help="Model config (id, short name or file stem); default: the results'.")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option("--task", help="Finesse task id in the model config; default: finesse/<rss|srs>-default."),
    ] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="Profile; default: the results'.")] = None,
    check_targets: Annotated[bool, typer.Option("--check-targets", help="Exit 1 below 0.99 x target.")] = False,
    check_measurements: Annotated[
        bool, typer.Option("--check-measurements", help="Exit 1 below 0.98 x the latest measurement.")
    ] = False,
    require_targets: Annotated[bool, typer.Option("--require-targets", help="Nothing saved fails.")] = False,
    save_target: Annotated[
        bool, typer.Option("--save-target", help="Save the score (average_rss or average_srs) as the target.")
    ] = False,
    save_measurement: Annotated[
        bool, typer.Option("--save-measurement", help="Append the score to the measurement history.")
    ] = False,
) -> None:
    """Check a results file against the model config's Finesse target/measurements and save it there:
    the same keys, margins and run-conditions diagnosis as `sie-bench eval` (sie_evals/lib/gates). RSS
    results gate average_rss; SRS results gate average_srs, and average_pbi where a target names it."""
    from sie_evals.finesse.results import checksum, gate_metrics, load_results, results_metric
    from sie_evals.lib.config.model_config import find_model_config
    from sie_evals.lib.gates.conditions import from_finesse_results
    from sie_evals.lib.gates.gate import gate_result
    from sie_evals.lib.gates.keys import ResultKey
    from sie_evals.lib.gates.thresholds import Against
    from sie_evals.lib.tasks import resolve_task

    results = load_results(json_path)
    integrity = checksum(results)
    if not integrity.ok:  # never gate on, or save, a tampered file
        _print_report(integrity)
    conditions = from_finesse_results(results)
    models = (results.get("metadata") or {}).get("models") or {}
    engine = models.get("native") or models.get("base_embedder") or {}
    model = model or engine.get("model_id")
    if not model:
        raise InputError(f"{json_path}: the results name no model config; pass --model")
    metrics = gate_metrics(results, json_path)
    config = find_model_config(model)
    spec = resolve_task(task or f"finesse/{results_metric(results, json_path)}-default")
    if spec.type != "finesse":
        raise InputError(f"--task {task}: not a Finesse task")
    if spec.rules.main_score not in metrics:
        raise InputError(
            f"--task {spec.task_id} gates {spec.rules.main_score}, but {json_path} holds {', '.join(metrics)}: "
            "pass the task of this results file's metric"
        )
    key = ResultKey.finesse(config.short_name, spec.task_id, profile or conditions.get("profile") or "default")
    against = tuple(
        a for flag, a in ((check_targets, Against.targets), (check_measurements, Against.measurements)) if flag
    )
    outcome = gate_result(
        config, spec, key, "finesse", metrics, conditions, against, require_targets, save_target, save_measurement
    )
    for c in outcome.checks:
        if c.no_target:
            out.print(f"WARN no {c.against[:-1]} saved for {key}: " + ("FAIL" if not c.passed else "nothing checked"))
            continue
        for v in c.verdicts:
            if v["ratio"] is None:  # a metric the saved entry names but this file lacks
                out.print(f"{c.against}: {v['metric']}: {v['status']}: FAIL")
                continue
            out.print(
                f"{c.against}: {v['metric']} {v['value']:.4f} vs {v['reference']:.4f} "
                f"(ratio {v['ratio']:.4f}, margin {v['margin']:g}): {'pass' if v['passed'] else 'FAIL'}"
            )
        if c.diagnosis:
            err.print(f"drift: {c.diagnosis}", highlight=False, soft_wrap=True)
    for line in outcome.saved:
        out.print(f"saved {line}")
    if not outcome.passed:
        raise typer.Exit(1)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
