"""`finesse generate`: draw probes, embed them in the configured mode, write one safetensors file.

Synthesis step i of a probe is the merge of chunks 0..i (spec §4):
- native / byok: the joined text `t_0 + ' ' + ... + ' ' + t_i` embedded as one input, each step timed;
  chunk embeddings come from one untimed batch. A length whose longest probe (prefix and special tokens
  included, counted with the model's own tokenizer) exceeds the model's context is reported as skipped, with
  the reason, never truncated or silently dropped.
- merger: chunk j's base embedding e_j then merger(e_j) are timed together (chunk_times[j]); the stored chunk
  embedding is the merger's view of the single chunk, s_i = merger(e_0..e_i) is timed, synth_times[0] = 0.0.
SRS (spec §8), per sample and probe prefix length p = 2..L-1: the probe's embedding (native: the joined text;
merger: merger(e(P_0..P_{p-1}))) and, for every insertion position, each context n-gram (cut to L-p chunks) with
the probe inserted in order (positive) or reversed (negative), embedded as joined text (native) or merged from
base embeddings (merger). 0.18.9 also embeds every partial insertion in native mode and discards it; that
wasted compute is not repeated (the stored embeddings are the same).
Latencies use time.perf_counter (ms).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sie_evals.finesse.config import FinesseConfig, Metric, Sampler
from sie_evals.finesse.io import EmbeddingsFile, LengthRun, ProbeSample, SrsProbeEmbeddings, write_embeddings
from sie_evals.finesse.probes import sampling as sp
from sie_evals.finesse.probes.embedders import ByokClient, EngineEmbedder, make_merger
from sie_evals.finesse.probes.sampling import Probe, SrsDraw, draw_probes, load_documents, load_tokenizer
from sie_evals.finesse.scoring import Mode
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.run_conditions import hardware, now_iso, software

WARMUP_TEXTS = ["Finesse warm-up sentence one.", "A second, slightly longer warm-up sentence for the model."]


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not progress)


def _native_run(
    embedder: Any, probes: dict[int, list[Probe]], progress: bool, check_context: bool = True
) -> dict[int, LengthRun]:
    runs: dict[int, LengthRun] = {}
    todo: list[tuple[int, Probe]] = []
    for length, items in probes.items():
        worst = max((embedder.count_tokens(" ".join(p.texts)) for p in items), default=0)
        if check_context and worst > embedder.max_context_length:
            reason = (
                f"longest probe is {worst} tokens (prefix and special tokens included), over the model's "
                f"max_context_length {embedder.max_context_length}"
            )
            runs[length] = LengthRun(length, [ProbeSample(p.texts, p.doc_ids) for p in items], reason)
        else:
            todo.extend((length, p) for p in items)
    if not todo:
        return runs
    embedder.embed(WARMUP_TEXTS)
    embedder.embed(WARMUP_TEXTS[:1])
    all_chunks = embedder.embed([t for _, p in todo for t in p.texts])
    bar = _bar(sum(len(p.texts) for _, p in todo), "finesse synthesis steps", progress)
    offset = 0
    for length, p in todo:
        chunks = all_chunks[offset : offset + length]
        offset += length
        synth, times = [], []
        for i in range(length):
            text = " ".join(p.texts[: i + 1])
            start = time.perf_counter()
            vec = embedder.embed([text])
            times.append(_ms(start))
            synth.append(vec[0])
            bar.update(1)
        run = runs.setdefault(length, LengthRun(length, []))
        run.samples.append(ProbeSample(p.texts, p.doc_ids, chunks, np.stack(synth), None, times))
    bar.close()
    return runs


def _merger_run(
    base: EngineEmbedder, merger: Any, probes: dict[int, list[Probe]], progress: bool
) -> dict[int, LengthRun]:
    warm = base.embed(WARMUP_TEXTS)
    merger.merge(warm)
    merger.merge(warm[:1])
    runs: dict[int, LengthRun] = {}
    bar = _bar(sum(2 * len(p.texts) for items in probes.values() for p in items), "finesse merger steps", progress)
    for length, items in probes.items():
        run = runs.setdefault(length, LengthRun(length, []))
        for p in items:
            base_vecs, chunk_vecs, chunk_times = [], [], []
            for text in p.texts:
                start = time.perf_counter()
                e = base.embed([text])[0]
                m = merger.merge(e[None])
                chunk_times.append(_ms(start))
                base_vecs.append(e)
                chunk_vecs.append(m)
                bar.update(1)
            stacked = np.stack(base_vecs)
            synth, synth_times = [], []
            for i in range(length):
                start = time.perf_counter()
                synth.append(merger.merge(stacked[: i + 1]))
                synth_times.append(_ms(start))
                bar.update(1)
            synth_times[0] = 0.0  # as 0.18.9: step 0 is the single-chunk merge already paid for in chunk_times
            run.samples.append(
                ProbeSample(p.texts, p.doc_ids, np.stack(chunk_vecs), np.stack(synth), chunk_times, synth_times)
            )
    bar.close()
    return runs


def _srs_native_sample(embedder: Any, length: int, draw: SrsDraw) -> dict[int, SrsProbeEmbeddings]:
    probe = draw.probe.texts
    ngrams = [g.texts for g in draw.context]
    out: dict[int, SrsProbeEmbeddings] = {}
    for p in range(2, length):
        texts = []
        for pos in range(length - p + 1):
            crafted = [sp.srs_sequences(probe, ng, length, p, pos) for ng in ngrams]
            texts.extend(" ".join(c[0]) for c in crafted)
            texts.extend(" ".join(c[1]) for c in crafted)
        vecs = embedder.embed([" ".join(probe[:p]), *texts])
        grid = vecs[1:].reshape(length - p + 1, 2, len(ngrams), -1)
        out[p] = SrsProbeEmbeddings(vecs[0], np.ascontiguousarray(grid[:, 0]), np.ascontiguousarray(grid[:, 1]))
    return out


def _merge_many(merger: Any, seqs: list[np.ndarray], batch_size: int) -> np.ndarray:
    """(N, S, D) sequences merged in batches (merge_batch when the merger has it, as 0.18.9 batches them)."""
    if hasattr(merger, "merge_batch"):
        parts = [merger.merge_batch(np.stack(seqs[i : i + batch_size])) for i in range(0, len(seqs), batch_size)]
        return np.concatenate(parts)
    return np.stack([merger.merge(s) for s in seqs])


def _srs_merger_sample(
    base: Any, merger: Any, length: int, draw: SrsDraw, batch_size: int
) -> dict[int, SrsProbeEmbeddings]:
    probe = list(base.embed(draw.probe.texts))
    flat = base.embed([t for g in draw.context for t in g.texts])
    groups = len(draw.context)
    ngrams = [list(flat[g * (length - 2) : (g + 1) * (length - 2)]) for g in range(groups)]
    out: dict[int, SrsProbeEmbeddings] = {}
    for p in range(2, length):
        positions = length - p + 1
        seqs = []
        for pos in range(positions):
            crafted = [sp.srs_sequences(probe, ng, length, p, pos) for ng in ngrams]
            seqs.extend(np.stack(c[0]) for c in crafted)
            seqs.extend(np.stack(c[1]) for c in crafted)
        grid = _merge_many(merger, seqs, batch_size).reshape(positions, 2, groups, -1)
        probe_vec = merger.merge(np.stack(probe[:p]))
        out[p] = SrsProbeEmbeddings(probe_vec, np.ascontiguousarray(grid[:, 0]), np.ascontiguousarray(grid[:, 1]))
    return out


def _srs_run(
    config: FinesseConfig, embedder: Any, merger: Any, draws: dict[int, list[SrsDraw]], progress: bool
) -> dict[int, LengthRun]:
    embedder.embed(WARMUP_TEXTS)
    runs: dict[int, LengthRun] = {}
    bar = _bar(sum(len(v) for v in draws.values()), "finesse SRS samples", progress)
    for length, items in draws.items():
        samples = []
        for d in items:
            srs = (
                _srs_merger_sample(embedder, merger, length, d, config.advanced.batch_size)
                if config.mode == Mode.merger_mode
                else _srs_native_sample(embedder, length, d)
            )
            samples.append(
                ProbeSample(
                    d.probe.texts,
                    d.probe.doc_ids,
                    context_texts=[g.texts for g in d.context],
                    context_ids=[g.doc_ids for g in d.context],
                    srs=srs,
                )
            )
            bar.update(1)
        runs[length] = LengthRun(length, samples)
    bar.close()
    return runs


def _srs_default_skips(embedder: Any, draws: dict[int, list[SrsDraw]], config: FinesseConfig) -> dict[int, str]:
    """sie-evals sampler, native/byok SRS: a length whose longest crafted text (L chunks) exceeds the context,
    counted with the model's tokenizer (prefix and special tokens included), is skipped, never truncated."""
    if config.mode == Mode.merger_mode:
        return {}
    skipped = {}
    for length, items in draws.items():
        worst = max(
            (embedder.count_tokens(" ".join(d.probe.texts + g.texts)) for d in items for g in d.context), default=0
        )
        if worst > embedder.max_context_length:
            skipped[length] = (
                f"longest SRS sequence is {worst} tokens (prefix and special tokens included), over the model's "
                f"max_context_length {embedder.max_context_length}"
            )
    return skipped


def _draw(
    config: FinesseConfig, config_dir: Path | None, embedder: Any
) -> tuple[dict[int, Any], dict[int, str], dict[str, Any], int | None]:
    """(draws per length, skipped lengths with reasons, sampler metadata, document count)."""
    pc = config.probe_config
    lengths, samples = config.lengths(), pc.samples_per_length
    if config.sampler == Sampler.finesse_0_18_9:
        if config.mode == Mode.merger_mode and pc.token_per_sample > embedder.max_context_length:
            raise InputError(  # 0.18.9's pre-flight check: a chunk must fit the base embedder
                f"probe_config.token_per_sample ({pc.token_per_sample}) exceeds the base embedder's "
                f"max_context_length ({embedder.max_context_length})"
            )
        chunker = embedder.chunker()
        box = sp.finesse_0189_box(
            config.datasets, config_dir, config.seed, chunker, pc.token_per_sample, config.chunks_needed()
        )
        ctx = None if config.mode == Mode.merger_mode else embedder.max_context_length
        if config.metric == Metric.srs:
            draws, skipped = sp.finesse_0189_srs(box, lengths, samples, pc.group_amount, ctx)
        else:
            draws, skipped = sp.finesse_0189_rss(box, lengths, samples, ctx)
        info = {"name": Sampler.finesse_0_18_9.value, "tokenizer": "the model's own (count_tokens/chunk_text)"}
        return draws, skipped, info, sum(len(r) for r in box.rows)
    tokenizer = load_tokenizer(pc.reference_tokenizer)
    docs = load_documents(config.datasets, config_dir)
    info = {"name": Sampler.sie_evals.value, "reference_tokenizer": tokenizer.info()}
    if config.metric == Metric.srs:
        stream = sp.chunk_stream(docs, tokenizer, pc.token_per_sample, config.seed)

        def short() -> InputError:
            return InputError(
                f"the datasets ({len(docs)} documents) have too few usable documents with at least "
                f"{pc.token_per_sample} tokens for the SRS probes ({config.chunks_needed()} chunks). Lower "
                "samples_per_length/group_amount/token_per_sample or add data."
            )

        draws = sp.srs_probes_from_stream(stream, lengths, samples, pc.group_amount, short)
        return draws, _srs_default_skips(embedder, draws, config), info, len(docs)
    draws = draw_probes(docs, tokenizer, lengths, samples, pc.token_per_sample, config.seed)
    return draws, {}, info, len(docs)


@contextlib.contextmanager
def _models(config: FinesseConfig, progress: bool, embedder: Any, merger: Any) -> Iterator[tuple[Any, Any]]:
    """(embedder, merger) for the mode: the given ones (programmatic use, tests), else built from the config."""
    models = config.models
    if config.mode == Mode.merger_mode:
        assert models.merger and models.base_embedder
        merger = merger or make_merger(models.merger)
    if embedder is not None:
        yield embedder, merger
        return
    if config.mode == Mode.byok_mode:
        assert models.byok_embedder
        if models.byok_embedder.tokenizer:
            counter = load_tokenizer(models.byok_embedder.tokenizer).tokenizer
        else:
            counter = load_tokenizer(config.probe_config.reference_tokenizer).tokenizer
        with ByokClient(models.byok_embedder, counter) as emb:
            yield emb, None
        return
    sel = models.native_embedder if config.mode == Mode.native_mode else models.base_embedder
    assert sel
    with EngineEmbedder(sel, config.advanced, progress) as emb:
        yield emb, merger


def output_name(config: FinesseConfig) -> str:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in config.model_name())
    return f"embeddings_{config.mode.value}_{config.metric}_{slug}.safetensors"


def generate(
    config: FinesseConfig,
    output_dir: Path,
    config_dir: Path | None = None,
    progress: bool = False,
    output_path: Path | None = None,
    embedder: Any = None,
    merger: Any = None,
) -> Path:
    """Run the whole generation; returns the path of the embeddings file. `embedder` / `merger` replace the
    configured models (objects with embed/count_tokens/chunker/max_context_length/identity and merge/identity)."""
    with _models(config, progress, embedder, merger) as (emb, merge):
        draws, skipped, sampler_info, documents = _draw(config, config_dir, emb)
        live = {length: items for length, items in draws.items() if length not in skipped}
        if config.metric == Metric.srs:
            runs = _srs_run(config, emb, merge, live, progress)
        elif config.mode == Mode.merger_mode:
            runs = _merger_run(emb, merge, live, progress)
        else:
            legacy = config.sampler == Sampler.finesse_0_18_9  # 0.18.9's own context rules already applied
            runs = _native_run(emb, live, progress, check_context=not legacy)
        for length, reason in skipped.items():
            items = draws.get(length) or []
            runs[length] = LengthRun(length, [ProbeSample(p.texts, p.doc_ids) for p in _probes_of(items)], reason)
        if config.mode == Mode.merger_mode:
            identity = {"merger": merge.identity(), "base_embedder": emb.identity()}
        else:
            identity = {config.mode.value.removesuffix("_mode"): emb.identity()}
    metadata = {
        "package_versions": {"sie-evals-finesse": "1", **software()},
        "dataset": [d.model_dump(mode="json") for d in config.datasets],
        "documents": documents,
        "sampler": {k: v for k, v in sampler_info.items() if k != "reference_tokenizer"},
        "models": identity,
        "device_info": hardware(),
        "scoring_method": config.metric.value,
        "created": now_iso(),
    }
    if "reference_tokenizer" in sampler_info:  # sampler sie-evals: the tokenizer that cut every chunk
        metadata["reference_tokenizer"] = sampler_info["reference_tokenizer"]
    path = output_path or (Path(output_dir) / output_name(config))
    write_embeddings(path, EmbeddingsFile(config.model_dump(mode="json"), metadata, dict(sorted(runs.items()))))
    return path


def _probes_of(items: list[Any]) -> list[Probe]:
    return [d.probe if isinstance(d, SrsDraw) else d for d in items]
