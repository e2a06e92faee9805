"""Embedding cache on disk, so re-scoring never re-embeds.

Entries are keyed by sha256 of: engine name and software version, model id/revision/weights,
the profile fields that change vectors, the kind (query/document) and the exact input texts.
Texts are cached in fixed chunks, each written as soon as it is embedded: a run that dies midway
keeps what it finished. Each entry is a `.npy` file (loaded with allow_pickle=False) plus a JSON
sidecar holding its sha256; an entry whose bytes, shape or values do not check out is deleted and
recomputed, never trusted.

A dense output of `MEMMAP_MIN_ROWS` texts or more (a large corpus) is assembled chunk by chunk into a
memory-mapped `.npy` under the cache folder and returned read-only, so a run never holds two in-memory copies of
millions of vectors: peak memory is one chunk plus the mapped pages (shared and evictable). On POSIX the file is
unlinked as soon as it is open, so nothing accumulates on disk, even when the process is killed.

With a `remote` artifact store (a shared s3://, gs:// or folder every worker reaches) the cache has two tiers:
a lookup tries this worker's folder, then the store (copying a found entry down, then verifying it as any local
one); a new entry is written locally and through to the store, sidecar last. So a worker with an empty disk gets
the hits of every other worker. The memory-mapped corpora stay local: they live only as long as one process.
"""

import errno
import hashlib
import itertools
import json
import logging
import os
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sie_evals.lib.core.artifacts import ArtifactStore
from sie_evals.lib.core.atomic import atomic_write_bytes, atomic_write_json
from sie_evals.lib.core.errors import EngineError
from sie_evals.lib.engines import serialization
from sie_evals.lib.engines.base import EmbedKind, Engine
from sie_evals.lib.engines.vectors import concat

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
DEFAULT_CHUNK_SIZE = 2048
# Dense outputs of this many rows or more are assembled memory-mapped (384 float32 dims: ~300 MB in memory).
MEMMAP_MIN_ROWS = 200_000
MEMMAP_FOLDER = "memmap"


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)  # length-prefixed: no two lists collide
    return h.hexdigest()


def engine_identity(engine: Engine) -> dict[str, Any]:
    info = engine.info()
    return {
        "format": CACHE_FORMAT,
        "engine": info.engine,
        "engine_version": info.version,
        "model_id": info.model_id,
        "model_revision": info.model_revision,
        "weights": info.weights,
        "profile": engine.profile.embedding_identity(),
    }


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "corrupt": self.corrupt}


class EmbeddingCache:
    def __init__(
        self,
        root: Path,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        memmap_min_rows: int | None = MEMMAP_MIN_ROWS,
        remote: ArtifactStore | None = None,
    ):
        """`memmap_min_rows`: dense outputs with at least this many rows come back as a read-only memory map
        (None: always in memory). `remote`: the shared tier (entries under its `embeddings/`), or None."""
        self.root = Path(root) / "embeddings"
        self.remote = remote
        self.memmap_dir = Path(root) / MEMMAP_FOLDER
        self.chunk_size = chunk_size
        self.memmap_min_rows = memmap_min_rows

    def key(self, identity: dict[str, Any], kind: EmbedKind, texts: Sequence[str]) -> str:
        payload = json.dumps({"id": identity, "kind": kind.value, "texts": texts_hash(texts)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.npy", folder / f"{key}.json"

    def _remote_keys(self, key: str) -> tuple[str, str]:
        return f"embeddings/{key[:2]}/{key}.npy", f"embeddings/{key[:2]}/{key}.json"

    def _pull(self, key: str) -> bool:
        """Copy the shared tier's entry `key` into the local folder (data first, sidecar last); False if none."""
        if self.remote is None:
            return False
        data_key, meta_key = self._remote_keys(key)
        meta = self.remote.read_bytes(meta_key)
        data = self.remote.read_bytes(data_key) if meta is not None else None
        if meta is None or data is None:
            return False
        data_path, meta_path = self._paths(key)
        atomic_write_bytes(data_path, data)
        atomic_write_bytes(meta_path, meta)
        return True

    def get(self, key: str, rows: int) -> np.ndarray | None:
        data_path, meta_path = self._paths(key)
        if not meta_path.exists() and not self._pull(key):
            return None
        try:
            meta = json.loads(meta_path.read_bytes())
            if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
                raise ValueError(f"sidecar is not an object with a sha256 string: {type(meta).__name__}")
            raw = data_path.read_bytes()
            if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
                raise ValueError("checksum mismatch")
            arr = serialization.load(raw, rows)  # dense .npy, or sparse/multivector .npz: verified, no pickle
        except (OSError, ValueError, KeyError, TypeError) as err:  # JSON and UTF-8 errors are ValueErrors
            log.warning("embedding cache entry %s is corrupt (%s); recomputing", meta_path, err)
            meta_path.unlink(missing_ok=True)
            data_path.unlink(missing_ok=True)
            raise CorruptEntry from None
        return arr

    def put(self, key: str, arr: np.ndarray, identity: dict[str, Any]) -> None:
        data_path, meta_path = self._paths(key)
        raw = serialization.dump(arr)
        atomic_write_bytes(data_path, raw)
        # The sidecar is written last: an entry without it is a miss, so a crash between the two is safe.
        atomic_write_json(
            meta_path, {"sha256": hashlib.sha256(raw).hexdigest(), "shape": list(arr.shape), "identity": identity}
        )
        if self.remote is not None:  # write through, sidecar last as locally
            data_key, meta_key = self._remote_keys(key)
            self.remote.write_bytes(data_key, raw)
            self.remote.write_bytes(meta_key, meta_path.read_bytes())

    def embed(
        self,
        engine: Engine,
        texts: Sequence[str],
        kind: EmbedKind,
        stats: CacheStats | None = None,
        memmap: bool = True,
    ) -> np.ndarray:
        """Embeddings for `texts`, from the cache where possible; missing chunks are computed and stored.
        A dense output of at least `memmap_min_rows` rows is a read-only memory map (unless `memmap` is False,
        for callers that may write into what they get)."""
        stats = stats if stats is not None else CacheStats()
        chunks = self._chunks(engine, texts, kind, stats)
        if memmap and self.memmap_min_rows is not None and len(texts) >= max(1, self.memmap_min_rows):
            first = next(chunks)
            if isinstance(first, np.ndarray):
                return self._assemble_memmap(first, chunks, len(texts))
            return concat([first, *chunks])  # sparse and multivector outputs stay in memory
        return concat(list(chunks))

    def _chunks(self, engine: Engine, texts: Sequence[str], kind: EmbedKind, stats: CacheStats) -> Iterator[Any]:
        """Each chunk's output in order, read from the cache or computed and stored (one chunk's texts at a time)."""
        identity = engine_identity(engine)
        for start in range(0, len(texts), self.chunk_size):
            chunk = list(texts[start : start + self.chunk_size])
            key = self.key(identity, kind, chunk)
            try:
                arr = self.get(key, len(chunk))
            except CorruptEntry:
                stats.corrupt += 1
                arr = None
            if arr is None:
                stats.misses += 1
                arr = engine.embed(chunk, kind)
                self.put(key, arr, identity)
            else:
                stats.hits += 1
            yield arr

    def _assemble_memmap(self, first: np.ndarray, rest: Iterator[Any], rows: int) -> np.memmap:
        """`first` and the `rest` of the chunks written into one memory-mapped float32 `.npy`, returned read-only.
        Holds one chunk in memory at a time; values are copied unchanged (bit-identical to concatenation)."""
        self.memmap_dir.mkdir(parents=True, exist_ok=True)
        path = self.memmap_dir / f"{uuid.uuid4().hex}.npy"
        out = None
        try:
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, first.shape[1]))
            with open(path, "r+b") as handle:  # read-write only to reserve blocks; the map below is read-only
                if os.name == "posix":
                    path.unlink()  # the open mappings keep the data; the kernel frees it with the last of them
                _reserve(handle, out.offset + out.nbytes, self.memmap_dir)
                pos = 0
                for part in itertools.chain([first], rest):
                    if not isinstance(part, np.ndarray) or part.ndim != 2 or part.shape[1] != out.shape[1]:
                        raise ValueError(
                            f"embedding cache: chunk at row {pos} is {getattr(part, 'shape', type(part).__name__)}, "
                            f"expected {out.shape[1]} columns like the first chunk"
                        )
                    out[pos : pos + len(part)] = part
                    pos += len(part)
                if pos != rows:
                    raise ValueError(f"embedding cache: assembled {pos} rows, expected {rows}")
                out.flush()
                result = np.memmap(handle, dtype=np.float32, mode="r", shape=out.shape, offset=out.offset)
        except BaseException:
            del out
            path.unlink(missing_ok=True)
            raise
        del out
        if os.name != "posix":  # an open file cannot be unlinked there: remove it once the map is collected
            weakref.finalize(result, _unlink_quietly, path)
        return result


def _reserve(file: Any, size: int, folder: Path) -> None:
    """Allocate the file's blocks up front: a full disk is then a clear error here, not a SIGBUS on a page write."""
    if not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(file.fileno(), 0, size)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise EngineError(
                f"embedding cache: no room in {folder} for a memory-mapped corpus of {size / 1e9:.1f} GB ({err})"
            ) from None
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate: map sparse
            raise


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not remove the memory-mapped corpus %s: %s", path, err)


class CorruptEntry(Exception):
    """Internal: a cache entry failed verification and was removed."""
