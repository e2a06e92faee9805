"""Embedding cache on disk, so re-scoring never re-embeds.

Entries are keyed by sha256 of: engine name and software version, model id/revision/weights,
the profile fields that change vectors, the kind (query/document) and the exact input texts.
Texts are cached in fixed chunks, each written as soon as it is embedded: a run that dies midway
keeps what it finished. Each entry is a `.npy` file (loaded with allow_pickle=False) plus a JSON
sidecar holding its sha256; an entry whose bytes, shape or values do not check out is deleted and
recomputed, never trusted.
"""

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sie_evals.lib.core.atomic import atomic_write_bytes, atomic_write_json
from sie_evals.lib.engines import outputs
from sie_evals.lib.engines.base import EmbedKind, Engine

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
DEFAULT_CHUNK_SIZE = 2048


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
    def __init__(self, root: Path, chunk_size: int = DEFAULT_CHUNK_SIZE):
        self.root = Path(root) / "embeddings"
        self.chunk_size = chunk_size

    def key(self, identity: dict[str, Any], kind: EmbedKind, texts: Sequence[str]) -> str:
        payload = json.dumps({"id": identity, "kind": kind.value, "texts": texts_hash(texts)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.npy", folder / f"{key}.json"

    def get(self, key: str, rows: int) -> np.ndarray | None:
        data_path, meta_path = self._paths(key)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_bytes())
            if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
                raise ValueError(f"sidecar is not an object with a sha256 string: {type(meta).__name__}")
            raw = data_path.read_bytes()
            if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
                raise ValueError("checksum mismatch")
            arr = outputs.load(raw, rows)  # dense .npy, or sparse/multivector .npz: verified, no pickle
        except (OSError, ValueError, KeyError, TypeError) as err:  # JSON and UTF-8 errors are ValueErrors
            log.warning("embedding cache entry %s is corrupt (%s); recomputing", meta_path, err)
            meta_path.unlink(missing_ok=True)
            data_path.unlink(missing_ok=True)
            raise CorruptEntry from None
        return arr

    def put(self, key: str, arr: np.ndarray, identity: dict[str, Any]) -> None:
        data_path, meta_path = self._paths(key)
        raw = outputs.dump(arr)
        atomic_write_bytes(data_path, raw)
        # The sidecar is written last: an entry without it is a miss, so a crash between the two is safe.
        atomic_write_json(
            meta_path, {"sha256": hashlib.sha256(raw).hexdigest(), "shape": list(arr.shape), "identity": identity}
        )

    def embed(
        self, engine: Engine, texts: Sequence[str], kind: EmbedKind, stats: CacheStats | None = None
    ) -> np.ndarray:
        """Embeddings for `texts`, from the cache where possible; missing chunks are computed and stored."""
        stats = stats if stats is not None else CacheStats()
        identity = engine_identity(engine)
        parts: list[np.ndarray] = []
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
            parts.append(arr)
        return outputs.concat(parts)


class CorruptEntry(Exception):
    """Internal: a cache entry failed verification and was removed."""
