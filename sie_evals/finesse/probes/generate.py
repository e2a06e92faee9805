"""`finesse generate`: draw probes, embed them in the configured mode, write one safetensors file.

Synthesis step i of a probe is the merge of chunks 0..i (spec §4):
- native / byok: the joined text `t_0 + ' ' + ... + ' ' + t_i` embedded as one input, each step timed;
  chunk embeddings come from one untimed batch. A length whose longest probe (prefix and special tokens
  included, counted with the model's own tokenizer) exceeds the model's context is reported as skipped, with
  the reason, never truncated or silently dropped.
- merger: chunk j's base embedding e_j then merger(e_j) are timed together (chunk_times[j]); the stored chunk
  embedding is the merger's view of the single chunk, s_i = merger(e_0..e_i) is timed, synth_times[0] = 0.0.
Latencies use time.perf_counter (ms).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from sie_evals.finesse.config import FinesseConfig, ProbeConfig
from sie_evals.finesse.io import EmbeddingsFile, LengthRun, ProbeSample, write_embeddings
from sie_evals.finesse.probes.embedders import ByokClient, EngineEmbedder, make_merger
from sie_evals.finesse.probes.sampling import Probe, ReferenceTokenizer, draw_probes, load_documents, load_tokenizer
from sie_evals.finesse.scoring import Mode
from sie_evals.lib.core.run_conditions import hardware, now_iso, software

WARMUP_TEXTS = ["Finesse warm-up sentence one.", "A second, slightly longer warm-up sentence for the model."]


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not progress)


def _native_run(embedder: Any, probes: dict[int, list[Probe]], progress: bool) -> dict[int, LengthRun]:
    runs: dict[int, LengthRun] = {}
    todo: list[tuple[int, Probe]] = []
    for length, items in probes.items():
        worst = max(embedder.count_tokens(" ".join(p.texts)) for p in items)
        if worst > embedder.max_context_length:
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


def output_name(config: FinesseConfig) -> str:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in config.model_name())
    return f"embeddings_{config.mode.value}_{config.metric}_{slug}.safetensors"


def generate(
    config: FinesseConfig,
    output_dir: Path,
    config_dir: Path | None = None,
    progress: bool = False,
    output_path: Path | None = None,
) -> Path:
    """Run the whole generation; returns the path of the embeddings file."""
    pc: ProbeConfig = config.probe_config
    tokenizer: ReferenceTokenizer = load_tokenizer(pc.reference_tokenizer)
    docs = load_documents(config.datasets, config_dir)
    probes = draw_probes(docs, tokenizer, config.lengths(), pc.samples_per_length, pc.token_per_sample, config.seed)
    models = config.models
    if config.mode == Mode.native_mode:
        assert models.native_embedder
        with EngineEmbedder(models.native_embedder, config.advanced, progress) as emb:
            runs = _native_run(emb, probes, progress)
            identity = {"native": emb.identity()}
    elif config.mode == Mode.byok_mode:
        assert models.byok_embedder
        counter = (
            load_tokenizer(models.byok_embedder.tokenizer).tokenizer
            if models.byok_embedder.tokenizer
            else tokenizer.tokenizer
        )
        with ByokClient(models.byok_embedder, counter) as emb:
            runs = _native_run(emb, probes, progress)
            identity = {"byok": emb.identity()}
    else:
        assert models.merger and models.base_embedder
        merger = make_merger(models.merger)
        with EngineEmbedder(models.base_embedder, config.advanced, progress) as base:
            runs = _merger_run(base, merger, probes, progress)
            identity = {"merger": merger.identity(), "base_embedder": base.identity()}
    metadata = {
        "package_versions": {"sie-evals-finesse": "1", **software()},
        "dataset": [d.model_dump(mode="json") for d in config.datasets],
        "documents": len(docs),
        "reference_tokenizer": tokenizer.info(),
        "models": identity,
        "device_info": hardware(),
        "scoring_method": config.metric,
        "created": now_iso(),
    }
    path = output_path or (Path(output_dir) / output_name(config))
    write_embeddings(path, EmbeddingsFile(config.model_dump(mode="json"), metadata, dict(sorted(runs.items()))))
    return path
