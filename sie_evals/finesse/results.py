"""`score`, `checksum` and `verify` as functions: results dicts in, lists of named problems out."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sie_evals.finesse import hashing as hs
from sie_evals.finesse.hashing import file_sha256
from sie_evals.finesse.io import EmbeddingsFile, read_embeddings
from sie_evals.finesse.scoring import FinalFormula, Gap, Mode, aggregate, aggregate_srs
from sie_evals.lib.core.atomic import atomic_write_text
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.text_files import decode_utf8

RESULTS_NAME = "benchmark_results.json"


def _model_hashes(metadata: dict[str, Any]) -> dict[str, str | None]:
    return {role: (info or {}).get("model_hash") for role, info in (metadata.get("models") or {}).items()}


def score_embeddings(
    emb: EmbeddingsFile,
    final_formula: FinalFormula | str | None = None,
    source_sha256: str | None = None,
    name: str = "",
) -> dict[str, Any]:
    """The results dict (unsealed) for an embeddings file: RSS or SRS, whichever the file was generated for."""
    cfg = emb.config
    if metric_of(emb) == "srs":
        return _score_srs(emb, source_sha256, name)
    gap = Gap(cfg.get("formula", "q1q3"))
    formula = FinalFormula(final_formula or cfg.get("final_formula") or FinalFormula.sum)
    mode = Mode(cfg.get("mode", "native_mode"))
    agg = aggregate(emb.scoring_input(), mode, gap, formula)
    length_scores = {
        str(length): {**scores.as_dict(), "stats": agg.per_length[length]}
        for length, scores in sorted(agg.length_scores.items())
    }
    skipped = emb.skipped()
    return {
        "config": cfg,
        "metric": "rss",
        "sampler": sampler_of(emb),
        "formula": gap.value,
        "final_formula": formula.value,
        "final_formula_definition": "500*(TD+BU)" if formula == FinalFormula.sum else "500*((TD+BU)/2-|TD-BU|)",
        "average_rss": agg.average_rss,
        "average_total_latency": agg.average_total_latency,
        "average_synthesis_latency": agg.average_synthesis_latency,
        "mean_of_length_means": agg.mean_of_length_means,
        "length_scores": length_scores,
        "skipped_lengths": skipped,
        "complete": not skipped,
        "metadata": emb.metadata,
        "model_hash": None if emb.legacy else _model_hashes(emb.metadata),
        "embeddings_file": {"name": name, "sha256": source_sha256, "legacy_pt": emb.legacy},
    }


def metric_of(emb: EmbeddingsFile) -> str:
    """rss | srs: the config's metric (ours), or the .pt metadata's scoring_method (finesse-benchmark's)."""
    if emb.legacy:
        return str((emb.metadata or {}).get("scoring_method") or "rss")
    return str(emb.config.get("metric", "rss"))


def sampler_of(emb: EmbeddingsFile) -> str:
    return "finesse-0.18.9" if emb.legacy else str(emb.config.get("sampler", "sie-evals"))


def _score_srs(emb: EmbeddingsFile, source_sha256: str | None, name: str) -> dict[str, Any]:
    gap = Gap(emb.config.get("formula", "q1q3"))
    agg = aggregate_srs(emb.srs_input(), gap)
    skipped = emb.skipped()
    return {
        "config": emb.config,
        "metric": "srs",
        "sampler": sampler_of(emb),
        "formula": gap.value,
        "average_srs": agg.average_srs,
        "average_pbi": agg.average_pbi,
        "length_scores": {
            str(length): {"sample_results": rows, "stats": agg.per_length[length]}
            for length, rows in sorted(agg.length_scores.items())
        },
        "skipped_lengths": skipped,
        "complete": not skipped,
        "metadata": emb.metadata,
        "model_hash": None if emb.legacy else _model_hashes(emb.metadata),
        "embeddings_file": {"name": name, "sha256": source_sha256, "legacy_pt": emb.legacy},
    }


def score_file(pt_path: Path, output_dir: Path, final_formula: str | None = None) -> tuple[Path, dict[str, Any]]:
    emb = read_embeddings(pt_path)
    results = hs.seal(score_embeddings(emb, final_formula, file_sha256(pt_path), Path(pt_path).name))
    out = Path(output_dir) / RESULTS_NAME
    atomic_write_text(out, json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return out, results


def load_results(path: Path) -> dict[str, Any]:
    """A results file, or InputError (exit 2) naming file:line:column of what is wrong, like sie-bench."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read results: {err.strerror}") from None
    text = decode_utf8(raw, path)  # bad input (exit 2), not a tampered file (exit 1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict) or "content_hash" not in data:
        raise InputError(f"{path}: not a Finesse results file (no content_hash)")
    return data


# What `finesse gate` checks and saves, by the results' metric: the main score first, then the rest.
GATE_METRICS = {"rss": ("average_rss",), "srs": ("average_srs", "average_pbi")}


def results_metric(results: dict[str, Any], path: Path) -> str:
    """rss | srs: the results' `metric` (ours), else whichever average a finesse-benchmark file holds."""
    metric = results.get("metric") or next((m for m in GATE_METRICS if f"average_{m}" in results), None)
    if metric not in GATE_METRICS:
        raise InputError(f"{path}: field 'metric': {metric!r} is not one of {', '.join(GATE_METRICS)}")
    return str(metric)


def gate_metrics(results: dict[str, Any], path: Path) -> dict[str, float]:
    """The numbers `finesse gate` checks: average_rss, or average_srs and average_pbi (the PBI is only
    compared where a saved target or measurement names it)."""
    metrics: dict[str, float] = {}
    for name in GATE_METRICS[results_metric(results, path)]:
        value = results.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(f"{path}: field '{name}': expected a finite number, got {value!r}")
        metrics[name] = float(value)
    return metrics


def is_legacy(results: dict[str, Any]) -> bool:
    return "hash_scheme" not in results


@dataclass
class Report:
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def checksum(
    results: dict[str, Any], model_path: Path | None = None, report: Report | None = None, allow_legacy: bool = False
) -> Report:
    """With FINESSE_HMAC_KEY set, a file must carry a valid signature: deleting `hash_scheme` and `signature` and
    recomputing the unkeyed legacy hash (a signature downgrade) fails unless legacy files are explicitly allowed."""
    report = report or Report()
    if is_legacy(results):
        if hs.hmac_key() is not None and not allow_legacy:
            report.problems.append(
                f"signature: missing (no hash_scheme: a finesse-benchmark legacy file, or one whose signature was "
                f"removed) but {hs.HMAC_KEY_ENV} is set; pass --legacy to check a legacy file's unkeyed hash"
            )
            report.checked.append("signature")
            return report
        report.notes.append("finesse-benchmark results: legacy (unkeyed, collision-prone) content hash")
        frame = {**results, "content_hash": ""}
        if hs.legacy_content_hash(frame) != results["content_hash"]:
            report.problems.append("content_hash: legacy hash of the results does not match the stored content_hash")
        report.checked.append("content_hash (legacy)")
        if model_path is not None:
            stored = results.get("model_hash") or {}
            got = hs.legacy_model_hash(model_path)
            if got not in stored.values():
                report.problems.append(f"model_hash: {model_path} hashes to {got[:16]}..., stored {stored}")
            report.checked.append("model_hash (legacy)")
        return report
    if results.get("hash_scheme") != hs.HASH_SCHEME:
        report.problems.append(f"hash_scheme: {results.get('hash_scheme')!r} is not {hs.HASH_SCHEME!r}")
        return report
    if hs.content_hash(results) != results["content_hash"]:
        report.problems.append("content_hash: the results' content does not match the stored content_hash")
    report.checked.append("content_hash")
    key = hs.hmac_key()
    sig = results.get("signature")
    if key is not None:
        if not sig:
            report.problems.append(f"signature: missing, but {hs.HMAC_KEY_ENV} is set (unsigned results)")
        elif sig != hs.signature(results, key):
            report.problems.append(
                f"signature: does not match (results edited, or signed with another {hs.HMAC_KEY_ENV})"
            )
        report.checked.append("signature")
    elif sig:
        report.notes.append(f"signature present but {hs.HMAC_KEY_ENV} is not set: not checked")
    if model_path is not None:
        hashes = results.get("model_hash") or {}
        models = (results.get("metadata") or {}).get("models") or {}
        matched = False
        for role, info in models.items():
            revision = (info or {}).get("model_revision", (info or {}).get("revision"))
            if hashes.get(role) and hs.model_hash(model_path, revision) == hashes[role]:
                matched = True
                report.notes.append(f"model_hash: {model_path} matches {role}")
        if not matched:
            report.problems.append(f"model_hash: {model_path} matches none of the stored model hashes {hashes}")
        report.checked.append("model_hash")
    return report


def _diff(path: str, a: Any, b: Any, out: list[str], limit: int = 12) -> None:
    """Differences between stored (a) and recomputed (b) values, named by JSON path."""
    if len(out) >= limit:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: {'missing from stored' if k not in a else 'not recomputed'}")
            else:
                _diff(f"{path}.{k}", a[k], b[k], out, limit)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} stored values, {len(b)} recomputed")
        else:
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                _diff(f"{path}[{i}]", x, y, out, limit)
    elif isinstance(a, float) and isinstance(b, float | int):
        if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9):
            out.append(f"{path}: stored {a!r}, recomputed {b!r}")
    elif a != b:
        out.append(f"{path}: stored {a!r}, recomputed {b!r}")


def verify(results: dict[str, Any], pt_path: Path, allow_legacy: bool = False) -> Report:
    """Checksum, then bind the results to the embeddings: same file, same metadata, same scores when re-scored."""
    report = checksum(results, allow_legacy=allow_legacy)
    emb = read_embeddings(pt_path)
    diffs: list[str] = []
    if is_legacy(results):
        if emb.metadata != results.get("metadata"):
            diffs.append("metadata: differs between the .pt and the results JSON")
        mode = Mode((results.get("config") or {}).get("mode", "merger_mode"))
        gap = Gap((results.get("config") or {}).get("formula", "q1q3"))
        stored = results.get("length_scores") or {}
        if metric_of(emb) == "srs":
            srs = aggregate_srs(emb.srs_input(), gap)
            for length, rows in srs.length_scores.items():
                entry = stored.get(str(length)) or {}
                _diff(f"length_scores.{length}.sample_results", entry.get("sample_results"), rows, diffs)
            _diff("average_srs", results.get("average_srs"), srs.average_srs, diffs)
            _diff("average_pbi", results.get("average_pbi"), srs.average_pbi, diffs)
        else:
            agg = aggregate(emb.scoring_input(), mode, gap, FinalFormula.sum)
            for length, scores in agg.length_scores.items():
                entry = stored.get(str(length)) or {}
                _diff(f"length_scores.{length}.rss_scores", entry.get("rss_scores"), scores.rss_scores, diffs)
            _diff("average_rss", results.get("average_rss"), agg.average_rss, diffs)
        report.checked.append("re-scored .pt (legacy)")
    else:
        stored_file = (results.get("embeddings_file") or {}).get("sha256")
        actual = file_sha256(pt_path)
        if stored_file != actual:
            diffs.append(f"embeddings_file.sha256: results were computed from {stored_file}, {pt_path} is {actual}")
        recomputed = score_embeddings(emb, results.get("final_formula"), actual, Path(pt_path).name)
        stored = {k: v for k, v in results.items() if k not in (*hs.UNSIGNED_FIELDS, "hash_scheme")}
        recomputed["embeddings_file"]["name"] = (results.get("embeddings_file") or {}).get("name")
        _diff("results", stored, recomputed, diffs)
        report.checked.append("embeddings sha256 and re-scored results")
    report.problems.extend(diffs)
    return report
