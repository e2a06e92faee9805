"""Retrieval task data: corpus, queries and qrels for one split, from a local BEIR folder or the hub.

Local BEIR folders are parsed line by line so that every malformed line is reported with its file
and line number; the hub path uses the `datasets` library on MTEB's dataset layout
(configs `corpus`, `queries`, and `default` for qrels, as in `mteb/scifact`).
"""

import csv
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import DatasetError
from sie_evals.lib.core.text_files import open_utf8
from sie_evals.lib.tasks.base import TaskDataBase
from sie_evals.lib.tasks.slicing import stable_sample
from sie_evals.lib.tasks.spec import TaskSpec

DEFAULT_SUBSET_CORPUS_SIZE = 1000
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrievalData(TaskDataBase):
    task_id: str
    split: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    origin: str  # a folder path or hf://dataset@revision
    subset: dict[str, int] | None = None  # the --limit-* options that produced this, if any
    content_hash: str = field(default="", compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)  # data oddities MTEB tolerates (see below)

    def __post_init__(self) -> None:
        if not self.content_hash:
            object.__setattr__(self, "content_hash", _content_hash(self))

    @property
    def variant(self) -> str:
        """split, or split@q<N>-c<M> for a subset of N queries and an M-document corpus."""
        if not self.subset:
            return self.split
        return f"{self.split}@q{self.subset['limit_queries']}-c{self.subset['corpus_size']}"

    @property
    def counts(self) -> dict[str, int]:
        return {
            "corpus": len(self.corpus_ids),
            "queries": len(self.query_ids),
            "qrels": sum(len(d) for d in self.qrels.values()),
        }

    def snapshot_frames(self) -> dict[str, Any]:
        """Its tables for the `task_dataset` snapshot (snapshot.py)."""
        import pandas as pd

        return {
            "corpus": pd.DataFrame({"id": self.corpus_ids, "text": self.corpus_texts}),
            "queries": pd.DataFrame({"id": self.query_ids, "text": self.query_texts}),
            "qrels": pd.DataFrame(
                [(q, d, s) for q, docs in self.qrels.items() for d, s in docs.items()],
                columns=["query_id", "doc_id", "score"],
            ),
        }

    @classmethod
    def from_snapshot(
        cls, common: dict[str, Any], meta: dict[str, Any], frame: Callable[[str], Any]
    ) -> "RetrievalData":
        corpus, queries = frame("corpus"), frame("queries")
        qrels: dict[str, dict[str, int]] = {}
        for q, d, s in frame("qrels").itertuples(index=False):
            qrels.setdefault(q, {})[d] = int(s)
        return cls(
            corpus_ids=corpus["id"].tolist(),
            corpus_texts=corpus["text"].tolist(),
            query_ids=queries["id"].tolist(),
            query_texts=queries["text"].tolist(),
            qrels=qrels,
            **common,
        )

    def take_subset(self, limit_queries: int, corpus_size: int | None = None) -> "RetrievalData":
        """A deterministic slice for fast runs: `limit_queries` queries chosen by a hash of their id
        (not file position), their relevant documents, and other documents, also chosen by id hash,
        up to `corpus_size` in all. The same arguments always give the same slice."""
        if limit_queries <= 0:
            raise DatasetError(f"--limit-queries must be positive, got {limit_queries}")
        corpus_size = corpus_size or DEFAULT_SUBSET_CORPUS_SIZE
        chosen = {self.query_ids[i] for i in stable_sample(self.query_ids, limit_queries)}
        relevant = {d for q in chosen for d in self.qrels[q]} & set(self.corpus_ids)  # judged docs may be absent
        fill = [d for d in self.corpus_ids if d not in relevant]
        keep_docs = relevant | {fill[i] for i in stable_sample(fill, corpus_size - len(relevant))}
        q_pairs = [(q, t) for q, t in zip(self.query_ids, self.query_texts, strict=True) if q in chosen]
        d_pairs = [(d, t) for d, t in zip(self.corpus_ids, self.corpus_texts, strict=True) if d in keep_docs]
        return replace(
            self,
            query_ids=[q for q, _ in q_pairs],
            query_texts=[t for _, t in q_pairs],
            corpus_ids=[d for d, _ in d_pairs],
            corpus_texts=[t for _, t in d_pairs],
            qrels={q: dict(self.qrels[q]) for q in self.query_ids if q in chosen},
            subset={"limit_queries": limit_queries, "corpus_size": corpus_size},
            content_hash="",
        )


def _content_hash(data: RetrievalData) -> str:
    """sha256 over the sorted (id, text) pairs and qrels: independent of file order and formatting."""
    h = hashlib.sha256()
    for section, ids, texts in (
        ("corpus", data.corpus_ids, data.corpus_texts),
        ("queries", data.query_ids, data.query_texts),
    ):
        h.update(f"[{section}]\n".encode())
        for item_id, text in sorted(zip(ids, texts, strict=True)):
            h.update(item_id.encode() + b"\x1f" + text.encode() + b"\x1e")
    h.update(b"[qrels]\n")
    for q in sorted(data.qrels):
        for d, score in sorted(data.qrels[q].items()):
            h.update(f"{q}\x1f{d}\x1f{score}\x1e".encode())
    return h.hexdigest()


def document_text(title: str | None, text: str | None) -> str:
    """MTEB's document text: title + " " + text, stripped."""
    return f"{title or ''} {text or ''}".strip()


# ---------------------------------------------------------------- local BEIR folders


def _read_jsonl(
    path: Path, required: tuple[str, ...], keep: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """Validated rows with their line numbers; `keep` reduces each row as it is read (a large corpus is never held
    twice: its title and text fields are dropped once the document text is built)."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    rows: list[tuple[int, dict[str, Any]]] = []
    with open_utf8(path, DatasetError) as fh:  # a non-UTF-8 byte is a DatasetError naming its line
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object")
            for key in required:
                if key not in row:
                    raise DatasetError(f"{path}:{lineno}: missing field '{key}'")
            if not isinstance(row["_id"], str | int):
                raise DatasetError(f"{path}:{lineno}: field '_id' must be a string")
            # A null text is not an empty one: it is a broken row (title may be null: many corpora omit it).
            if "text" in row and not isinstance(row["text"], str):
                got = "null" if row["text"] is None else type(row["text"]).__name__
                raise DatasetError(f"{path}:{lineno}: field 'text' must be a string, got {got}")
            if row.get("title") is not None and not isinstance(row["title"], str):
                raise DatasetError(f"{path}:{lineno}: field 'title' must be a string")
            rows.append((lineno, keep(row) if keep else row))
    return rows


def _unique(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> None:
    seen: dict[str, int] = {}
    for lineno, row in rows:
        item_id = str(row["_id"])
        if item_id in seen:
            raise DatasetError(f"{path}:{lineno}: duplicate _id {item_id!r} (first on line {seen[item_id]})")
        seen[item_id] = lineno


def _read_qrels(path: Path) -> list[tuple[int, str, str, int]]:
    rows: list[tuple[int, str, str, int]] = []
    with open_utf8(path, DatasetError, translate_newlines=False) as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        for lineno, cols in enumerate(reader, start=1):
            if not cols or not "".join(cols).strip():
                continue
            if lineno == 1 and cols[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue  # header
            if len(cols) != 3:
                raise DatasetError(
                    f"{path}:{lineno}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(cols)}"
                )
            qid, did, score = (c.strip() for c in cols)
            try:
                rel = int(score)
            except ValueError:
                raise DatasetError(f"{path}:{lineno}: score {score!r} is not an integer") from None
            rows.append((lineno, qid, did, rel))
    return rows


def available_local_splits(folder: Path) -> list[str]:
    return sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))


def load_local_beir(spec: TaskSpec, split: str, data_root: Path) -> RetrievalData:
    folder = data_root / spec.local_dir
    if not folder.is_dir():
        present = sorted(p.name for p in data_root.iterdir() if p.is_dir()) if data_root.is_dir() else []
        raise DatasetError(
            f"{folder}: no dataset folder for task {spec.task_id} under data root {data_root} "
            f"(folders there: {', '.join(present) or 'none'})"
        )
    return read_beir_folder(folder, split, spec.task_id)


def read_beir_folder(folder: Path, split: str, task_id: str) -> RetrievalData:
    """One split of a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."""
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = available_local_splits(folder)
        raise DatasetError(
            f"{qrels_path}: missing qrels file for split {split!r} of {task_id}; "
            f"available splits: {', '.join(splits) or 'none'}"
        )
    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    corpus_rows = _read_jsonl(
        corpus_path, ("_id",), keep=lambda r: {"_id": r["_id"], "text": document_text(r.get("title"), r.get("text"))}
    )
    if not corpus_rows:
        raise DatasetError(f"{corpus_path}: the corpus is empty")
    _unique(corpus_path, corpus_rows)
    query_rows = _read_jsonl(queries_path, ("_id", "text"))
    _unique(queries_path, query_rows)
    qrel_rows = _read_qrels(qrels_path)
    if not qrel_rows:
        raise DatasetError(f"{qrels_path}: no relevance judgements in split {split!r}")

    doc_ids = {str(r["_id"]) for _, r in corpus_rows}
    query_text = {str(r["_id"]): r["text"] for _, r in query_rows}
    qrels: dict[str, dict[str, int]] = {}
    for _lineno, qid, did, rel in qrel_rows:
        qrels.setdefault(qid, {})[did] = rel
    # Like MTEB: only the split's queries with at least one judged document are evaluated.
    query_ids = [str(r["_id"]) for _, r in query_rows if str(r["_id"]) in qrels]
    warnings = dangling_qrels_warnings(qrels, doc_ids, set(query_text), f"{qrels_path}")
    return RetrievalData(
        task_id=task_id,
        split=split,
        corpus_ids=[str(r["_id"]) for _, r in corpus_rows],
        corpus_texts=[r["text"] for _, r in corpus_rows],
        query_ids=query_ids,
        query_texts=[query_text[q] for q in query_ids],
        qrels=qrels,
        origin=str(folder),
        warnings=warnings,
    )


def dangling_qrels_warnings(
    qrels: dict[str, dict[str, int]], doc_ids: set[str], query_ids: set[str], where: str
) -> tuple[str, ...]:
    """Real BEIR data has qrels naming documents missing from the corpus (and queries missing from the
    queries file). MTEB keeps them: a judged document that is not in the corpus can never be retrieved, so it
    counts against recall/nDCG, and a judged query that does not exist is never searched, so it is not
    evaluated. We do exactly the same and say so, with a count and the first ids."""
    out = []
    missing_docs = sorted({d for docs in qrels.values() for d in docs if d not in doc_ids})
    if missing_docs:
        out.append(
            f"{where}: {len(missing_docs)} judged document(s) are not in the corpus (first: "
            f"{', '.join(missing_docs[:5])}); evaluated as MTEB does: they count as relevant and are never retrieved"
        )
    missing_queries = sorted(q for q in qrels if q not in query_ids)
    if missing_queries:
        out.append(
            f"{where}: {len(missing_queries)} judged query id(s) are not in the queries (first: "
            f"{', '.join(missing_queries[:5])}); not evaluated, as in MTEB"
        )
    for line in out:
        log.warning("%s", line)
    return tuple(out)


# ---------------------------------------------------------------- Hugging Face hub


def load_hf_beir(spec: TaskSpec, split: str) -> RetrievalData:
    """The real hub loader (MTEB's layout). Needs network access; offline it fails with a hint."""
    if not spec.hf_dataset:
        raise DatasetError(
            f"task {spec.task_id} has no Hugging Face dataset registered; set {paths.DATA_DIR_ENV} to a "
            f"folder holding {spec.local_dir}/ in BEIR layout"
        )
    import datasets  # heavy import, only on this path

    origin = f"hf://{spec.hf_dataset}@{spec.hf_revision or 'main'}"
    try:
        corpus = datasets.load_dataset(spec.hf_dataset, "corpus", split="corpus", revision=spec.hf_revision)
        queries = datasets.load_dataset(spec.hf_dataset, "queries", split="queries", revision=spec.hf_revision)
        qrels_ds = datasets.load_dataset(spec.hf_dataset, "default", split=split, revision=spec.hf_revision)
    except Exception as err:  # the hub raises many types; all mean "could not load"
        raise DatasetError(
            f"{origin}: could not load split {split!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            f"Offline? Set {paths.DATA_DIR_ENV} to a folder with {spec.local_dir}/ in BEIR layout."
        ) from None
    qrels: dict[str, dict[str, int]] = {}
    for row in qrels_ds:
        qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
    qtext = {str(r["_id"]): r["text"] for r in queries}
    if bad := next((q for q, t in qtext.items() if not isinstance(t, str)), None):
        raise DatasetError(f"{origin}: queries: _id {bad!r}: field 'text' must be a string, got {qtext[bad]!r}")
    query_ids = [q for q in qtext if q in qrels]
    return RetrievalData(
        task_id=spec.task_id,
        split=split,
        corpus_ids=[str(r["_id"]) for r in corpus],
        corpus_texts=[document_text(r.get("title"), r.get("text")) for r in corpus],
        query_ids=query_ids,
        query_texts=[qtext[q] for q in query_ids],
        qrels=qrels,
        origin=origin,
    )


def load_retrieval_data(spec: TaskSpec, split: str | None = None, data_root: Path | None = None) -> RetrievalData:
    """Local BEIR folder when a data root is set (argument or SIE_EVALS_DATA_DIR), else the hub."""
    split = split or spec.default_split
    data_root = data_root or paths.data_dir()
    if data_root is not None:
        return load_local_beir(spec, split, Path(data_root))
    return load_hf_beir(spec, split)
