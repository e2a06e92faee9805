"""The probe/embedding file `finesse generate` writes and `finesse score` reads: one safetensors file (no pickle).

Tensors: RSS `L{length}.s{sample}.chunks` and `L{length}.s{sample}.synth`, each (L, D); SRS, per probe prefix
length p, `L{length}.s{sample}.p{p}.probe` (D,) and `.pos` / `.neg` (positions, groups, D).
Header metadata `finesse` (JSON): format, config, metadata (versions, datasets, reference tokenizer, model
identity and hash, device), and per length either `skipped` with the reason or the samples' chunk texts,
document ids and timings (ms).

Legacy finesse-benchmark .pt files can be read for re-scoring with torch's restricted `weights_only` loader
(tensors, lists, dicts and scalars only; no arbitrary objects), never with full pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sie_evals.finesse.scoring import Sample
from sie_evals.lib.core.atomic import atomic_write_bytes
from sie_evals.lib.core.errors import InputError

FORMAT = "sie-evals-finesse-embeddings/1"


@dataclass
class SrsProbeEmbeddings:
    """One SRS probe prefix length p: the probe's embedding and the crafted sequences' (positions x groups)."""

    probe: Any  # (D,)
    positives: Any  # (L-p+1, G, D)
    negatives: Any  # (L-p+1, G, D)


@dataclass
class ProbeSample:
    texts: list[str]
    doc_ids: list[str]
    chunks: np.ndarray | None = None  # (L, D)
    synth: np.ndarray | None = None  # (L, D)
    chunk_times: list[float] | None = None
    synth_times: list[float] = field(default_factory=list)
    # SRS: texts holds the L-1 probe chunks; the context n-grams and the per-p embeddings are here
    context_texts: list[list[str]] | None = None
    context_ids: list[list[str]] | None = None
    srs: dict[int, SrsProbeEmbeddings] | None = None


@dataclass
class LengthRun:
    length: int
    samples: list[ProbeSample]
    skipped: str | None = None  # reason, when the length was not embedded


@dataclass
class EmbeddingsFile:
    config: dict[str, Any]
    metadata: dict[str, Any]
    lengths: dict[int, LengthRun]
    legacy: bool = False

    def scoring_input(self) -> list[tuple[int, list[Sample]]]:
        out = []
        for length, run in sorted(self.lengths.items()):
            if run.skipped:
                continue
            out.append(
                (
                    length,
                    [
                        Sample(s.chunks, s.synth, s.synth_times, s.chunk_times)  # type: ignore[arg-type]
                        for s in run.samples
                    ],
                )
            )
        return out

    def srs_input(self) -> list[tuple[int, list[dict[int, SrsProbeEmbeddings]]]]:
        return [
            (length, [s.srs or {} for s in run.samples])
            for length, run in sorted(self.lengths.items())
            if not run.skipped
        ]

    def skipped(self) -> dict[str, str]:
        return {str(k): r.skipped for k, r in sorted(self.lengths.items()) if r.skipped}


def write_embeddings(path: Path, data: EmbeddingsFile) -> None:
    from safetensors.numpy import save

    tensors: dict[str, np.ndarray] = {}
    lengths_meta: dict[str, Any] = {}
    for length, run in sorted(data.lengths.items()):
        if run.skipped:
            texts_only = [{"texts": s.texts, "doc_ids": s.doc_ids} for s in run.samples]  # auditable even if skipped
            lengths_meta[str(length)] = {"skipped": run.skipped, "samples": texts_only}
            continue
        samples = []
        for k, s in enumerate(run.samples):
            if s.srs is not None:
                for p, e in sorted(s.srs.items()):
                    tensors[f"L{length}.s{k}.p{p}.probe"] = np.ascontiguousarray(e.probe)
                    tensors[f"L{length}.s{k}.p{p}.pos"] = np.ascontiguousarray(e.positives)
                    tensors[f"L{length}.s{k}.p{p}.neg"] = np.ascontiguousarray(e.negatives)
                samples.append(
                    {
                        "texts": s.texts,
                        "doc_ids": s.doc_ids,
                        "context_texts": s.context_texts,
                        "context_ids": s.context_ids,
                        "probe_lengths": sorted(s.srs),
                    }
                )
                continue
            assert s.chunks is not None and s.synth is not None
            tensors[f"L{length}.s{k}.chunks"] = np.ascontiguousarray(s.chunks)
            tensors[f"L{length}.s{k}.synth"] = np.ascontiguousarray(s.synth)
            samples.append(
                {"texts": s.texts, "doc_ids": s.doc_ids, "chunk_times": s.chunk_times, "synth_times": s.synth_times}
            )
        lengths_meta[str(length)] = {"skipped": None, "samples": samples}
    header = {"format": FORMAT, "config": data.config, "metadata": data.metadata, "lengths": lengths_meta}
    blob = save(tensors, metadata={"finesse": json.dumps(header, ensure_ascii=False)})
    atomic_write_bytes(Path(path), blob)


def read_embeddings(path: Path) -> EmbeddingsFile:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such embeddings file")
    if path.suffix == ".pt":
        return _read_legacy_pt(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise InputError(f"{path}: not a readable safetensors file: {err}") from None
    try:
        header = json.loads(meta["finesse"])
    except (KeyError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: missing or malformed 'finesse' metadata header ({err})") from None
    if header.get("format") != FORMAT:
        raise InputError(f"{path}: format {header.get('format')!r}, expected {FORMAT!r}")
    lengths: dict[int, LengthRun] = {}
    for key, entry in header.get("lengths", {}).items():
        length = int(key)
        if entry.get("skipped"):
            kept = [ProbeSample(x["texts"], x["doc_ids"]) for x in entry.get("samples", [])]
            lengths[length] = LengthRun(length, kept, entry["skipped"])
            continue
        samples = []
        for k, s in enumerate(entry["samples"]):
            if "probe_lengths" in s:
                samples.append(_read_srs_sample(path, tensors, length, k, s))
                continue
            names = (f"L{length}.s{k}.chunks", f"L{length}.s{k}.synth")
            missing = [n for n in names if n not in tensors]
            if missing:
                raise InputError(f"{path}: tensor(s) {missing} missing for length {length} sample {k}")
            samples.append(
                ProbeSample(
                    texts=s["texts"],
                    doc_ids=s["doc_ids"],
                    chunks=tensors[names[0]],
                    synth=tensors[names[1]],
                    chunk_times=s.get("chunk_times"),
                    synth_times=s.get("synth_times") or [],
                )
            )
        lengths[length] = LengthRun(length, samples)
    return EmbeddingsFile(header["config"], header["metadata"], lengths)


def _read_srs_sample(path: Path, tensors: dict[str, np.ndarray], length: int, k: int, s: dict) -> ProbeSample:
    srs: dict[int, SrsProbeEmbeddings] = {}
    for p in s["probe_lengths"]:
        names = [f"L{length}.s{k}.p{p}.{part}" for part in ("probe", "pos", "neg")]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise InputError(f"{path}: tensor(s) {missing} missing for length {length} sample {k}")
        srs[int(p)] = SrsProbeEmbeddings(*(tensors[n] for n in names))
    return ProbeSample(
        texts=s["texts"], doc_ids=s["doc_ids"], context_texts=s["context_texts"], context_ids=s["context_ids"], srs=srs
    )


def _plain_strings(obj: Any) -> Any:
    """str subclasses (TorchVersion) as plain str, so metadata compares and serialises like the JSON copy."""
    if isinstance(obj, dict):
        return {k: _plain_strings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain_strings(v) for v in obj]
    if isinstance(obj, str) and type(obj) is not str:
        return str(obj)
    return obj


def _legacy_srs_sample(path: Path, length: int, sample: Any) -> ProbeSample:
    """{str(p): {probe_embedding, probe_pos_embeddings: {str(pos): {positive_embeddings, negative_embeddings}}}}
    (spec §8) as stacked tensors in the stored dtype. Positions keep the file's order, as 0.18.9 scores them."""
    import torch

    srs: dict[int, SrsProbeEmbeddings] = {}
    try:
        for p_key, data in sample.items():
            by_pos = data["probe_pos_embeddings"]
            pos = [torch.stack(list(v["positive_embeddings"])) for v in by_pos.values()]
            neg = [torch.stack(list(v["negative_embeddings"])) for v in by_pos.values()]
            srs[int(p_key)] = SrsProbeEmbeddings(data["probe_embedding"], torch.stack(pos), torch.stack(neg))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        raise InputError(f"{path}: length {length}: malformed SRS sample ({type(err).__name__}: {err})") from None
    return ProbeSample(texts=[], doc_ids=[], srs=srs)


def _read_legacy_pt(path: Path) -> EmbeddingsFile:
    """A finesse-benchmark .pt, through torch's restricted unpickler (weights_only=True)."""
    import torch
    from torch.torch_version import TorchVersion

    try:
        # Every 0.18.9 .pt stores metadata.device_info.torch_version as torch.__version__, a TorchVersion (a str
        # subclass with comparison methods only): allowlisting it keeps the loader restricted.
        with torch.serialization.safe_globals([TorchVersion]):
            raw = torch.load(path, map_location="cpu", weights_only=True)
        raw = _plain_strings(raw)
    except Exception as err:
        raise InputError(f"{path}: cannot load as a finesse-benchmark .pt with weights_only=True: {err}") from None
    try:
        config, metadata = raw["config"], raw["metadata"]
        length_results = raw["raw_results"]["length_results"]
    except (KeyError, TypeError) as err:
        raise InputError(f"{path}: not a finesse-benchmark results .pt (missing {err})") from None
    lengths: dict[int, LengthRun] = {}
    for key, entry in length_results.items():
        length = int(key)
        if entry.get("skipped"):
            lengths[length] = LengthRun(length, [], "skipped by finesse-benchmark (over the context length)")
            continue
        if (metadata or {}).get("scoring_method") == "srs":
            samples = [_legacy_srs_sample(path, length, s) for s in entry.get("sample_results", [])]
            lengths[length] = LengthRun(length, samples)
            continue
        samples = []
        for s in entry.get("sample_results", []):
            chunks = s.get("chunk_embeddings") or []
            synth = s.get("synthesis_embeddings") or []
            samples.append(
                ProbeSample(
                    texts=[],
                    doc_ids=[],
                    chunks=torch.stack(list(chunks)) if chunks else torch.zeros(0, 0),  # keeps the stored dtype
                    synth=torch.stack(list(synth)) if synth else torch.zeros(0, 0),
                    chunk_times=s.get("chunk_times"),
                    synth_times=list(s.get("synth_times") or []),
                )
            )
        lengths[length] = LengthRun(length, samples)
    return EmbeddingsFile(config, metadata, lengths, legacy=True)
