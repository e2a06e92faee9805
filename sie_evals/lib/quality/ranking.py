"""Ranked results of a retrieval eval ("runs"): what the metrics were computed from, kept so a person
can see which documents the model put where, and score them with any tool.

The ranking is the search's own (scoring.retrieval_top_k): rows best first, ties by score descending
then document *index* ascending (the corpus order of the task data), after MTEB's run rules
(ignore_identical_ids, skip_first_result) exactly as the metrics saw it. Ranks start at 1.

Two file formats, the same rows:
- TREC run format, `qid Q0 docid rank score tag`, one line per (query, document), queries in the
  task's order; the score is the float32 similarity written in full (repr), so a TREC tool reads
  back the very value the metrics used.
- Parquet with columns query_id, doc_id, rank, score (float32)."""

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sie_evals.lib.core.atomic import atomic_write, atomic_write_text
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.parquet import ColumnKind, read_parquet_table
from sie_evals.lib.quality.metrics import apply_mteb_run_rules
from sie_evals.lib.quality.search import to_run

DEFAULT_RUN_K = 100  # --save-run-k, and what saved targets/measurements keep
RUN_SCHEMA: dict[str, ColumnKind] = {"query_id": "id", "doc_id": "id", "rank": "integer", "score": "number"}
RUN_COLUMNS = tuple(RUN_SCHEMA)


@dataclass(frozen=True)
class Ranking:
    """A retrieval eval's top-k search result, with what turns it into the scored run."""

    query_ids: list[str]
    doc_ids: list[str]
    scores: np.ndarray  # (queries, k) best first
    indices: np.ndarray  # (queries, k) document indices
    ignore_identical_ids: bool = False
    skip_first_result: bool = False

    @property
    def depth(self) -> int:
        """How many documents per query the search kept (the task's largest k, or the corpus)."""
        return int(self.indices.shape[1]) if self.indices.ndim == 2 else 0

    def frame(self, k: int = DEFAULT_RUN_K) -> pd.DataFrame:
        """The top `k` per query as rows (query_id, doc_id, rank, score), as the metrics saw them."""
        # the run rules drop at most two leading documents (the query itself, the first result)
        width = min(k + 2, self.depth)
        run = apply_mteb_run_rules(
            to_run(self.query_ids, self.doc_ids, self.scores[:, :width], self.indices[:, :width]),
            self.ignore_identical_ids,
            self.skip_first_result,
        )
        kept = [list(docs.items())[:k] for docs in run.values()]
        lengths = [len(r) for r in kept]
        pairs = list(itertools.chain.from_iterable(kept))
        return pd.DataFrame(
            {
                "query_id": np.repeat(np.asarray(list(run), dtype=object), lengths),
                "doc_id": pd.Series([d for d, _ in pairs], dtype=object),
                "rank": np.concatenate([np.arange(1, n + 1) for n in lengths]) if pairs else np.zeros(0, np.int64),
                "score": np.asarray([s for _, s in pairs], dtype=np.float32),
            },
            columns=list(RUN_COLUMNS),
        ).astype({"rank": np.int64})


def run_paths(path: Path) -> tuple[Path, Path]:
    """(TREC file, Parquet file) for `--save-run PATH`: PATH is the TREC file and the Parquet is beside
    it with the suffix .parquet (run.trec -> run.trec, run.parquet); a PATH ending in .parquet names the
    Parquet and the TREC file gets .trec."""
    path = Path(path)
    if path.suffix == ".parquet":
        return path.with_suffix(".trec"), path
    return path, path.with_suffix(".parquet")


def source_run_path(path: Path, source: str, several: bool) -> Path:
    """With several computed sources, one run per source: run.trec -> run.<source>.trec."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{source}{path.suffix}") if several else path


def run_tag(*parts: str) -> str:
    """The TREC tag column: one token (whitespace would split the line)."""
    return re.sub(r"\s+", "_", ":".join(p for p in parts if p)) or "sie-evals"


def trec_text(frame: pd.DataFrame, tag: str) -> str:
    """TREC run lines; ids with whitespace cannot be written in this format (InputError)."""
    for col in ("query_id", "doc_id"):
        bad = frame[col][frame[col].astype(str).str.contains(r"\s", regex=True)]
        if len(bad):
            raise InputError(f"{col} {bad.iloc[0]!r} holds whitespace: not expressible as a TREC run line")
    scores = [repr(float(s)) for s in frame["score"].to_numpy(dtype=np.float32).tolist()]
    lines = [
        f"{q} Q0 {d} {r} {s} {tag}"
        for q, d, r, s in zip(frame["query_id"], frame["doc_id"], frame["rank"], scores, strict=True)
    ]
    return "\n".join(lines) + ("\n" if lines else "")


def write_run(path: Path, frame: pd.DataFrame, tag: str) -> list[Path]:
    """The TREC file and the Parquet of one run, each written atomically; returns both paths."""
    trec, parquet = run_paths(path)
    text = trec_text(frame, tag)
    atomic_write(parquet, lambda tmp: frame.to_parquet(tmp, index=False))
    atomic_write_text(trec, text)
    return [trec, parquet]


def check_run_frame(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """A ranking read back with RUN_SCHEMA (read_parquet_table): the ranks and scores this module writes."""
    if len(frame) and int(frame["rank"].min()) < 1:
        raise InputError(f"{source}: column 'rank' must hold integers from 1")
    if frame["score"].isna().any():
        raise InputError(f"{source}: column 'score' must hold numbers, not NaN")
    return frame


def read_run(path: Path) -> pd.DataFrame:
    """A run Parquet (InputError naming the file when missing or malformed)."""
    path = Path(path)
    try:
        frame = read_parquet_table(path, RUN_SCHEMA, "ranked run")
    except FileNotFoundError:
        raise InputError(f"{path}: ranked run not found") from None
    return check_run_frame(frame, f"{path}: ranked run")


def ranks_of(frame: pd.DataFrame, query_id: str) -> dict[str, int]:
    """doc id -> rank for one query of a run frame."""
    rows = frame[frame["query_id"] == query_id]
    return dict(zip(rows["doc_id"].tolist(), rows["rank"].astype(int).tolist(), strict=True))
