"""A deterministic compute source for sharding at a scale the real model cannot reach on 2 CPUs (300,000
documents in a test): each text's vector is a fixed function of its words, plus what makes sharding hard with a
real engine: a small term set by the batch the text lands in. Like the local engine, it sorts one call's texts by
length and cuts batches of `batch_size`; the batch's longest text (its padding) shifts every vector of the batch.
So a shard plan that changes the engine's calls changes the bytes, and one that keeps them does not.

A test adds the row with `register_source(BATCHY)`; Celery workers get it by running the app in sharding_worker.py."""

import json
import zlib
from pathlib import Path

import numpy as np

from sie_evals.lib.core.sources import SourceSpec
from sie_evals.lib.engines.base import EmbedKind, Engine, EngineInfo

DIMS = 32
_WORDS = np.random.default_rng(0).standard_normal((1 << 16, DIMS)).astype(np.float32)


class BatchSensitiveEngine(Engine):
    name = "batchy"

    def __init__(self, model, profile, batch_size: int | None = None):
        super().__init__(model, profile)
        self.batch_size = batch_size or profile.batch_size

    def info(self) -> EngineInfo:
        return EngineInfo(self.name, "batchy 1", self.model.model_id, self.model.revision, "synthetic")

    def _embed_prepared(self, texts: list[str], kind: EmbedKind) -> np.ndarray:
        words = [t.split() for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -len(words[i]))  # stable, longest first, as local.py
        out = np.empty((len(texts), DIMS), dtype=np.float32)
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            padded = max(len(words[i]) for i in idx)
            for i in idx:
                rows = [zlib.crc32(w.encode()) & 0xFFFF for w in words[i]] or [0]
                out[i] = _WORDS[rows].sum(axis=0)
            out[idx, 0] += np.float32(1e-3) * padded  # the batch's padding shows in the last bits
            self.forward_calls += 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


BATCHY = SourceSpec(
    "batchy",
    engine="sie_evals_tests.sharding_engine:BatchSensitiveEngine",
    options=("batch_size",),
    help="a deterministic, batch-sensitive engine (sharding tests)",
)


def make_synthetic_beir(folder: Path, docs: int, queries: int, seed: int = 0) -> Path:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) of `docs` short documents (5-10 words of a
    20,000-word vocabulary) and `queries` queries, each three words of one document plus a stray word, that
    document its one relevant doc."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 11, docs)
    words = rng.integers(0, 20_000, int(lengths.sum()))
    ends = np.cumsum(lengths)
    texts = [" ".join(f"w{w}" for w in words[end - n : end]) for n, end in zip(lengths, ends, strict=True)]
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as fh:
        fh.writelines(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(texts))
    targets = rng.choice(docs, queries, replace=False)
    with open(folder / "queries.jsonl", "w") as fh:
        for j, t in enumerate(targets):
            picked = [*rng.permutation(texts[t].split())[:3].tolist(), f"w{rng.integers(20_000)}"]
            fh.write(json.dumps({"_id": f"q{j}", "text": " ".join(picked)}) + "\n")
    rows = [f"q{j}\td{t}\t1" for j, t in enumerate(targets)]
    (folder / "qrels" / "test.tsv").write_text("\n".join(["query-id\tcorpus-id\tscore", *rows]) + "\n")
    return folder
