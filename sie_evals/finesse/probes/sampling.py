"""Documents and probe chunks: seeded, deterministic, and independent of the model under test.

Unlike finesse-benchmark 0.18.9 (spec §3), which draws with Python's *global* `random` and cuts chunks with
each model's own tokenizer (so different models see different texts), here:
- all documents of all datasets, in config order, are permuted once with `numpy.random.default_rng(seed)`;
- documents are walked in that order; one with fewer than `token_per_sample` reference-tokenizer tokens is
  rejected, otherwise its chunk is the original text up to the end of its `token_per_sample`-th token (cut at
  the character offset, so case and spacing survive; duplicates of an earlier chunk are rejected);
- lengths min..max, then samples, take consecutive accepted chunks.
The chunk texts and document ids are stored with the embeddings, so a run can be audited and replayed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from sie_evals.finesse.config import FILE_BUILDERS, DatasetConfig
from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import ConfigError, DatasetError, InputError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "merges.txt",
    "vocab.json",
)


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


@dataclass
class ReferenceTokenizer:
    name: str
    source: str  # folder or hub id it was loaded from
    tokenizer: Any

    def info(self) -> dict[str, Any]:
        files = {}
        folder = Path(self.source)
        if folder.is_dir():
            for name in TOKENIZER_FILES:
                f = folder / name
                if f.is_file():
                    files[name] = hashlib.sha256(f.read_bytes()).hexdigest()
        return {
            "name": self.name,
            "source": self.source,
            "class": type(self.tokenizer).__name__,
            "files_sha256": files,
        }


def tokenizer_source(name: str) -> str:
    """A model config name -> its weights folder; an existing folder -> itself; else a hub id."""
    from sie_evals.lib.config.model_config import find_model_config
    from sie_evals.lib.config.weights import resolve_weights
    from sie_evals.lib.core.errors import UnknownNameError

    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    try:
        return resolve_weights(find_model_config(name))
    except UnknownNameError:
        return name


def load_tokenizer(name: str) -> ReferenceTokenizer:
    from transformers import AutoTokenizer

    source = tokenizer_source(name)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"reference tokenizer {name!r} (from {source}) cannot be loaded: {err}. Without hub access use a "
            "model config name (e.g. sentence-transformers/all-MiniLM-L6-v2) or a local tokenizer folder."
        ) from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"reference tokenizer {name!r} must be a fast tokenizer (character offsets are needed)")
    return ReferenceTokenizer(name, source, tok)


def _resolve_local(entry: str, config_dir: Path | None) -> Path:
    if entry.startswith("data:"):
        root = paths.data_dir()
        if root is None:
            raise ConfigError(f"dataset file {entry!r}: 'data:' paths need ${paths.DATA_DIR_ENV} to be set")
        return root / entry[len("data:") :]
    p = Path(entry).expanduser()
    if not p.is_absolute() and config_dir is not None:
        p = config_dir / p
    return p


def _iter_local_file(path: Path, ds: DatasetConfig) -> Iterator[Document]:
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                yield Document(f"{path.name}:{n + 1}", line)
        return
    if suffix == ".parquet":
        for doc in _parquet_rows(path, ds):
            if doc is not None:
                yield doc
        return
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}: not valid JSON: {err}") from None
            if not isinstance(rows, list):
                raise DatasetError(f"{path}: expected a JSON list of records")
            numbered = list(enumerate(rows, start=1))
        else:
            numbered = []
            for n, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    numbered.append((n, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{path}: line {n}: not valid JSON: {err}") from None
        for n, row in numbered:
            if not isinstance(row, dict) or ds.text_column not in row:
                raise DatasetError(f"{path}: record {n}: no field {ds.text_column!r}")
            value = row[ds.text_column]
            if not isinstance(value, str):
                raise DatasetError(f"{path}: record {n}: field {ds.text_column!r} is not a string")
            doc_id = row.get(ds.id_column) if ds.id_column else None
            yield Document(str(doc_id) if doc_id is not None else f"{path.name}:{n}", value)
        return
    raise DatasetError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .parquet or .txt)")


ID_FALLBACK = "string_id"  # finesse-benchmark-database's row id


def _parquet_rows(path: Path, ds: DatasetConfig) -> list[Document | None]:
    """Every row of a parquet file in order; None where the text is missing or not a string."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for non-parquet bytes
        raise DatasetError(f"{path}: not a readable parquet file: {err}") from None
    columns = table.column_names
    if ds.text_column not in columns:
        raise DatasetError(f"{path}: field text_column {ds.text_column!r} is not a column (columns: {columns})")
    id_col = next((c for c in (ds.id_column, ID_FALLBACK) if c and c in columns), None)
    texts = table.column(ds.text_column).to_pylist()
    ids = table.column(id_col).to_pylist() if id_col else range(len(texts))
    return [Document(str(i), t) if isinstance(t, str) else None for i, t in zip(ids, texts, strict=True)]


def local_dataset_copy(dataset_configs: list[DatasetConfig], root: Path, text_column: str | None) -> list[dict]:
    """The configured Hugging Face datasets read from a local copy of their repository layout under `root`
    (e.g. the leaderboard's uonlp/CulturaX shards downloaded once): `data_files` patterns (wildcards allowed) or
    `data_dir` resolved inside `root`, parquet files in sorted order (as `datasets` resolves them), with the
    config's text_column. Datasets that already name local files (or a file builder such as `json`) are kept."""
    import glob

    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"--dataset-path {root}: not a folder")
    out = []
    for index, ds in enumerate(dataset_configs):
        data = ds.model_dump(mode="json")
        if text_column:
            data["text_column"] = text_column
        if ds.local_files is not None or ds.path in FILE_BUILDERS:
            out.append(data)
            continue
        if ds.data_files is not None:
            field = f"datasets[{index}].data_files"
            patterns = [ds.data_files] if isinstance(ds.data_files, str) else list(ds.data_files)
        elif ds.data_dir is not None:
            field = f"datasets[{index}].data_dir"
            patterns = [f"{ds.data_dir.rstrip('/')}/**/*.parquet"]
        else:
            field = f"datasets[{index}].path"
            patterns = ["**/*.parquet"]
        files = sorted({f for pat in patterns for f in glob.glob(str(root / pat), recursive=True) if Path(f).is_file()})
        parquet = [f for f in files if f.endswith(".parquet")]
        if not parquet:
            shown = patterns[0] if len(patterns) == 1 else patterns
            raise DatasetError(
                f"--dataset-path {root}: no parquet files match field {field} = {shown!r} (dataset {ds.path!r})"
            )
        data.update({"path": None, "data_files": None, "data_dir": None, "commit_hash": None, "local_files": parquet})
        out.append(data)
    return out


def _load_hf(ds: DatasetConfig) -> Any:
    """The Hub dataset `ds` names, at its commit (DatasetError naming it when it cannot be loaded)."""
    import datasets

    try:
        return datasets.load_dataset(
            ds.path,
            split=ds.split,
            data_files=ds.data_files,
            data_dir=ds.data_dir if ds.data_files is None else None,
            revision=ds.commit_hash or None,
        )
    except Exception as err:  # datasets raises many types (offline, missing split, bad files)
        raise DatasetError(f"dataset {ds.path!r} (split {ds.split!r}) cannot be loaded: {err}") from None


def _iter_hf(ds: DatasetConfig) -> Iterator[Document]:
    data = _load_hf(ds)
    if ds.text_column not in data.column_names:
        raise DatasetError(f"dataset {ds.path!r}: no column {ds.text_column!r} (columns: {data.column_names})")
    has_id = bool(ds.id_column) and ds.id_column in data.column_names
    for n, row in enumerate(data):
        text = row[ds.text_column]
        if isinstance(text, str):
            yield Document(str(row[ds.id_column]) if has_id else str(n), text)


def load_documents(dataset_configs: list[DatasetConfig], config_dir: Path | None) -> list[Document]:
    docs: list[Document] = []
    for index, ds in enumerate(dataset_configs):
        if ds.local_files is not None:
            for entry in ds.local_files:
                path = _resolve_local(entry, config_dir)
                docs.extend(Document(f"{index}/{d.doc_id}", d.text) for d in _iter_local_file(path, ds))
        else:
            docs.extend(Document(f"{index}/{d.doc_id}", d.text) for d in _iter_hf(ds))
    if not docs:
        raise DatasetError("the configured datasets hold no documents")
    return docs


@dataclass
class Probe:
    texts: list[str]
    doc_ids: list[str]


def chunk_stream(
    docs: list[Document], tokenizer: ReferenceTokenizer, token_per_sample: int, seed: int
) -> Iterator[tuple[str, str]]:
    """(doc_id, chunk text) in seeded order; rejected documents are skipped."""
    order = np.random.default_rng(seed).permutation(len(docs))
    seen: set[str] = set()
    # A token is rarely more than 32 characters: tokenising only the opening keeps long documents cheap.
    max_chars = 32 * token_per_sample
    batch = 256
    for start in range(0, len(order), batch):
        picked = [docs[int(i)] for i in order[start : start + batch]]
        enc = tokenizer.tokenizer(
            [d.text[:max_chars] for d in picked], add_special_tokens=False, return_offsets_mapping=True
        )
        for doc, offsets in zip(picked, enc["offset_mapping"], strict=True):
            if len(offsets) < token_per_sample:
                continue
            chunk = doc.text[offsets[0][0] : offsets[token_per_sample - 1][1]]
            if chunk in seen:
                continue
            seen.add(chunk)
            yield doc.doc_id, chunk


def draw_probes(
    docs: list[Document],
    tokenizer: ReferenceTokenizer,
    lengths: list[int],
    samples_per_length: int,
    token_per_sample: int,
    seed: int,
) -> dict[int, list[Probe]]:
    need = sum(lengths) * samples_per_length
    stream = chunk_stream(docs, tokenizer, token_per_sample, seed)
    probes: dict[int, list[Probe]] = {}
    drawn = 0
    for length in lengths:
        probes[length] = []
        for _ in range(samples_per_length):
            texts, ids = [], []
            for _ in range(length):
                try:
                    doc_id, chunk = next(stream)
                except StopIteration:
                    raise InputError(
                        f"the datasets ({len(docs)} documents) have only {drawn} usable documents with at least "
                        f"{token_per_sample} tokens; the probes need {need} (lengths {lengths[0]}-{lengths[-1]} x "
                        f"{samples_per_length} samples). Lower samples_per_length/token_per_sample or add data."
                    ) from None
                drawn += 1
                ids.append(doc_id)
                texts.append(chunk)
            probes[length].append(Probe(texts, ids))
    return probes


# ------------------------------------------------------------------------------------ probe plans (both samplers)
@dataclass
class SrsDraw:
    """One SRS sample's texts: L-1 probe chunks, then group_amount n-grams of L-2 context chunks."""

    probe: Probe
    context: list[Probe]  # group_amount n-grams


def srs_sequences(probe: list[Any], ngram: list[Any], length: int, p: int, pos: int) -> tuple[list[Any], list[Any]]:
    """The crafted sequences of 0.18.9's SRS (spec §8) for probe prefix length p at insertion position pos:
    the n-gram cut to L-p items with P_0..P_{p-1} inserted in order (positive) or reversed (negative)."""
    head, tail = ngram[:pos], ngram[pos : length - p]
    prefix = probe[:p]
    return head + prefix + tail, head + prefix[::-1] + tail


def srs_texts_fit(draw: SrsDraw, length: int, count_tokens: Any, max_ctx: int) -> bool:
    """Native SRS keeps a sample only if every crafted text (each partial insertion included, as 0.18.9 checks)
    has at most max_ctx tokens; otherwise the sample is dropped and its chunks stay consumed."""
    probe = draw.probe.texts
    for p in range(2, length):
        for pos in range(length - p + 1):
            for ngram in (g.texts[: length - p] for g in draw.context):
                for forward in (True, False):
                    crafted = list(ngram)
                    for chunk in reversed(probe[:p]) if forward else probe[:p]:
                        crafted.insert(pos, chunk)
                        if count_tokens(" ".join(crafted)) > max_ctx:
                            return False
    return True


def srs_probes_from_stream(
    stream: Iterator[tuple[str, str]], lengths: list[int], samples: int, groups: int, short: Any
) -> dict[int, list[SrsDraw]]:
    """SRS draws from a chunk stream (sampler sie-evals): per sample L-1 probe chunks, then the context."""

    def take(n: int) -> Probe:
        texts, ids = [], []
        for _ in range(n):
            try:
                doc_id, chunk = next(stream)
            except StopIteration:
                raise short() from None
            ids.append(doc_id)
            texts.append(chunk)
        return Probe(texts, ids)

    out: dict[int, list[SrsDraw]] = {}
    for length in lengths:
        out[length] = []
        for _ in range(samples):
            probe = take(length - 1)
            context = [take(length - 2) for _ in range(groups)]
            out[length].append(SrsDraw(probe, context))
    return out


# -------------------------------------------------------------------------- sampler finesse-0.18.9 (spec §3-4)
class ModelChunker:
    """0.18.9's HuggingFaceEmbedder.count_tokens / chunk_text with the model's own tokenizer: tokens without
    special tokens or prefix; a chunk is the decoded first N token ids (decode, not a character cut)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def chunk_text(self, text: str, max_tokens: int) -> str:
        return self.tokenizer.decode(self.tokenizer.encode(text, add_special_tokens=False)[:max_tokens])


def load_dataset_rows(ds: DatasetConfig, config_dir: Path | None, index: int) -> list[Document | None]:
    """Every row of one configured dataset in its stored order (None where the text is missing or not a string:
    0.18.9 loses that ticket). Local files and hub datasets alike."""
    rows: list[Document | None] = []
    if ds.local_files is not None:
        for entry in ds.local_files:
            path = _resolve_local(entry, config_dir)
            if path.suffix.lower() == ".parquet" and path.is_file():
                found = _parquet_rows(path, ds)
            else:
                found = list(_iter_local_file(path, ds))
            rows.extend(Document(f"{index}/{d.doc_id}", d.text) if d else None for d in found)
        return rows
    data = _load_hf(ds)
    if ds.text_column not in data.column_names:
        raise DatasetError(
            f"dataset {ds.path!r}: field text_column {ds.text_column!r} is not a column (columns: {data.column_names})"
        )
    texts = data[ds.text_column]
    return [Document(f"{index}/{n}", t) if isinstance(t, str) else None for n, t in enumerate(texts)]


class LotteryBox:
    """0.18.9's "Unified Lottery Box" (spec §3): each dataset permuted with numpy default_rng(seed) (what
    `datasets.Dataset.shuffle(seed)` does; the same seed for every dataset), then tickets drawn with Python's
    Mersenne Twister seeded with `seed`. A ticket picks a DATASET (weighted by its remaining rows); the row is
    that dataset's next shuffled row. Short documents (< token_per_sample model tokens) consume their ticket.
    A private random.Random(seed) gives the same draws as 0.18.9's reseeded global `random`, without other code
    being able to shift them."""

    def __init__(self, datasets_rows: list[list[Document | None]], seed: int, chunker: ModelChunker, tps: int):
        import random

        self.rows = [
            [rows[int(i)] for i in np.random.default_rng(seed).permutation(len(rows))] for rows in datasets_rows
        ]
        self.next_row = [0] * len(self.rows)
        self.remaining = [len(r) for r in self.rows]
        self.total = sum(self.remaining)
        self.rng = random.Random(seed)
        self.chunker = chunker
        self.tps = tps

    def draw(self, count: int) -> Probe:
        texts: list[str] = []
        ids: list[str] = []
        while len(texts) < count:
            if self.total == 0:
                raise InputError(
                    "finesse-0.18.9 sampler: the lottery box is exhausted (every row of every dataset drawn); "
                    "too few documents with at least token_per_sample model tokens for these lengths and samples"
                )
            ticket = self.rng.randint(0, self.total - 1)
            cumulative = 0
            chosen = 0
            for d, count_d in enumerate(self.remaining):
                cumulative += count_d
                if ticket < cumulative:
                    chosen = d
                    break
            self.total -= 1
            self.remaining[chosen] -= 1
            if self.next_row[chosen] >= len(self.rows[chosen]):
                continue
            doc = self.rows[chosen][self.next_row[chosen]]
            self.next_row[chosen] += 1
            if doc is None or self.chunker.count_tokens(doc.text) < self.tps:
                continue
            texts.append(self.chunker.chunk_text(doc.text, self.tps))
            ids.append(doc.doc_id)
        return Probe(texts, ids)


def finesse_0189_box(
    dataset_configs: list[DatasetConfig], config_dir: Path | None, seed: int, chunker: ModelChunker, tps: int, need: int
) -> LotteryBox:
    rows = [load_dataset_rows(ds, config_dir, i) for i, ds in enumerate(dataset_configs)]
    total = sum(len(r) for r in rows)
    if total < need:
        raise InputError(
            f"finesse-0.18.9 sampler: the datasets hold {total} rows, fewer than the {need} chunks the probes need "
            "(0.18.9's own up-front check)"
        )
    return LotteryBox(rows, seed, chunker, tps)


def _attempts(box: LotteryBox, length: int, kept: list[Any], samples: int) -> Iterator[None]:
    """0.18.9 gives up on a length after as many sample attempts as there were tickets when it started."""
    limit = box.total
    attempts = 0
    while len(kept) < samples:
        attempts += 1
        if attempts > limit:
            raise InputError(
                f"finesse-0.18.9 sampler: length {length}: only {len(kept)}/{samples} samples fit the context"
            )
        yield


def _skipped_by_estimate(box: LotteryBox, length: int, native_ctx: int | None) -> str | None:
    """0.18.9's native-mode rule: a length whose estimate L*tps + 100 exceeds the context is skipped before
    drawing (the reason), else None."""
    estimate = length * box.tps + 100
    if native_ctx is None or estimate <= native_ctx:
        return None
    return (
        f"0.18.9 estimate {length}x{box.tps}+100 = {estimate} tokens > max_context_length {native_ctx} "
        "(skipped before drawing)"
    )


T = TypeVar("T")  # a draw: an RSS Probe or an SrsDraw


def _draw_per_length(
    box: LotteryBox, lengths: list[int], samples: int, native_ctx: int | None, draw: Callable[[int], T | None]
) -> tuple[dict[int, list[T]], dict[int, str]]:
    """0.18.9's loop over lengths (RSS and SRS alike): a length the estimate rules out is skipped (the
    reason), else `draw(length)` is called until `samples` fit; None is a sample that did not fit (its
    chunks stay consumed)."""
    out: dict[int, list[T]] = {}
    skipped: dict[int, str] = {}
    for length in lengths:
        reason = _skipped_by_estimate(box, length, native_ctx)
        if reason:
            skipped[length] = reason
            continue
        kept: list[T] = []
        for _ in _attempts(box, length, kept, samples):
            drawn = draw(length)
            if drawn is not None:
                kept.append(drawn)
        out[length] = kept
    return out, skipped


def finesse_0189_rss(
    box: LotteryBox, lengths: list[int], samples: int, native_ctx: int | None
) -> tuple[dict[int, list[Probe]], dict[int, str]]:
    """RSS draws in 0.18.9's order. Native mode (native_ctx set): a length with L*tps + 100 > ctx is skipped
    before drawing; a sample whose joined text has more than ctx model tokens is dropped (chunks consumed)."""

    def draw(length: int) -> Probe | None:
        probe = box.draw(length)
        return probe if native_ctx is None or box.chunker.count_tokens(" ".join(probe.texts)) <= native_ctx else None

    return _draw_per_length(box, lengths, samples, native_ctx, draw)


def finesse_0189_srs(
    box: LotteryBox, lengths: list[int], samples: int, groups: int, native_ctx: int | None
) -> tuple[dict[int, list[SrsDraw]], dict[int, str]]:
    """SRS draws in 0.18.9's order: per sample L-1 probe chunks, then groups*(L-2) context chunks; native mode
    skips lengths by the same estimate and drops samples whose crafted texts do not fit."""

    def draw(length: int) -> SrsDraw | None:
        probe = box.draw(length - 1)
        flat = box.draw(groups * (length - 2))
        n = length - 2
        context = [Probe(flat.texts[g * n : (g + 1) * n], flat.doc_ids[g * n : (g + 1) * n]) for g in range(groups)]
        drawn = SrsDraw(probe, context)
        return (
            drawn if native_ctx is None or srs_texts_fit(drawn, length, box.chunker.count_tokens, native_ctx) else None
        )

    return _draw_per_length(box, lengths, samples, native_ctx, draw)
