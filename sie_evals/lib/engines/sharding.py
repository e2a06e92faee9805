"""Sharded embedding of one large input (a corpus of millions of documents), bit-identical to the unsharded run
by construction.

What fixes the bytes of a text's vector is the engine call it is embedded in: the local engine sorts one call's
texts by token length and pads each batch to its longest, a server batches one request, and a float32 forward
pass of the same text in another batch can differ in the last bits. The unsharded run's engine calls are the
embedding cache's chunks: `EmbeddingCache.embed` cuts each kind's texts, in input order, into chunks of
`chunk_size` and embeds and stores them chunk by chunk, whatever the engine. So the one rule: **a shard is a run
of whole chunks of that plan** (each kind cut at multiples of `chunk_size`). A shard's chunks are then the very
engine calls of the unsharded run, stored under the same cache keys; a retried or repeated shard is a cache hit;
and the merge reads the whole input back through the cache (`CachedEngine`): the unsharded code path with every
chunk a hit, so the merged vectors are the unsharded ones byte for byte. Cutting anywhere else (inside a chunk,
or by a global length order across chunks) changes engine calls, and the bytes (test_sharding.py shows it)."""

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sie_evals.lib.config.model_config import ModelConfig, OutputType, ResolvedProfile
from sie_evals.lib.core.errors import EngineError
from sie_evals.lib.engines.base import EmbedKind, Engine, EngineInfo
from sie_evals.lib.engines.cache import CacheStats, EmbeddingCache, engine_identity


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of one kind's texts (input order)."""

    kind: EmbedKind
    start: int
    stop: int


@dataclass(frozen=True)
class Shard:
    """One step's share of the input. `whole`: the task's inputs are not known up front (MTEB's own evaluators
    decide what they embed), so its one shard embeds the task as a whole."""

    index: int
    count: int
    pieces: tuple[Piece, ...] = ()
    whole: bool = False

    @property
    def rows(self) -> int:
        return sum(p.stop - p.start for p in self.pieces)

    @property
    def name(self) -> str:
        """Names the shard in step keys and logs ([A-Za-z0-9_], as Dagster mapping keys must be)."""
        width = len(str(self.count))
        return f"shard_{self.index + 1:0{width}d}_of_{self.count}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "count": self.count,
            "whole": self.whole,
            "pieces": [[p.kind.value, p.start, p.stop] for p in self.pieces],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Shard":
        pieces = tuple(Piece(EmbedKind(k), int(a), int(b)) for k, a, b in d["pieces"])
        return cls(int(d["index"]), int(d["count"]), pieces, bool(d["whole"]))


def plan_shards(sizes: Mapping[EmbedKind, int] | None, shard_size: int, chunk_size: int) -> list[Shard]:
    """Shards of at most `shard_size` rows rounded up to whole cache chunks, every row of every kind in exactly
    one shard, kinds in the order given (a retrieval task's queries ride in the first shard). An input of at
    most `shard_size` rows is one shard; one whose sizes are not known (None) is one whole shard."""
    if shard_size < 1 or chunk_size < 1:
        raise ValueError(f"shard_size and chunk_size must be >= 1 (got {shard_size}, {chunk_size})")
    if sizes is None:
        return [Shard(0, 1, whole=True)]
    if sum(sizes.values()) <= shard_size:
        return [Shard(0, 1, tuple(Piece(k, 0, n) for k, n in sizes.items() if n))]
    chunks = [Piece(k, s, min(s + chunk_size, n)) for k, n in sizes.items() for s in range(0, n, chunk_size)]
    per_shard = math.ceil(shard_size / chunk_size)
    groups = [chunks[i : i + per_shard] for i in range(0, len(chunks), per_shard)]
    return [Shard(i, len(groups), _joined(group)) for i, group in enumerate(groups)]


def _joined(chunks: list[Piece]) -> tuple[Piece, ...]:
    """Adjacent chunks of one kind as one piece."""
    out: list[Piece] = []
    for c in chunks:
        if out and out[-1].kind == c.kind and out[-1].stop == c.start:
            out[-1] = Piece(c.kind, out[-1].start, c.stop)
        else:
            out.append(c)
    return tuple(out)


@dataclass
class ShardReport:
    """What one shard step did: shown per shard in the UI, summed by the merge."""

    index: int
    rows: int
    seconds: float
    cache: dict[str, int]
    forward_calls: int
    engine_started: bool
    engine_info: dict[str, Any]
    identity: dict[str, Any]  # the cache identity its entries are stored under

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def embed_shard(
    engine: Engine, inputs: Mapping[EmbedKind, Sequence[str]], shard: Shard, cache: EmbeddingCache
) -> ShardReport:
    """Embed a shard's pieces into the cache, one cache chunk per call (so one chunk in memory at a time);
    chunks already there are hits."""
    stats, calls = CacheStats(), engine.forward_calls
    start = time.perf_counter()
    for piece in shard.pieces:
        texts = inputs[piece.kind]
        whole_chunks = piece.start % cache.chunk_size == 0 and (
            piece.stop % cache.chunk_size == 0 or piece.stop == len(texts)
        )
        if not whole_chunks:  # the plan's rule; anything else would change the engine's calls, and the bytes
            raise ValueError(f"{shard.name}: {piece} is not a run of whole {cache.chunk_size}-row chunks")
        for s in range(piece.start, piece.stop, cache.chunk_size):
            cache.embed(engine, texts[s : min(s + cache.chunk_size, piece.stop)], piece.kind, stats, memmap=False)
    return shard_report(engine, shard, stats, time.perf_counter() - start, engine.forward_calls - calls)


def shard_report(engine: Engine, shard: Shard, stats: CacheStats, seconds: float, forward_calls: int) -> ShardReport:
    return ShardReport(
        index=shard.index,
        rows=shard.rows,
        seconds=seconds,
        cache=stats.as_dict(),
        forward_calls=forward_calls,
        engine_started=engine.started,
        engine_info=engine.info().as_dict(),
        identity=engine_identity(engine),
    )


def merge_engine(
    model: ModelConfig, profile: ResolvedProfile, reports: Sequence[Mapping[str, Any]], where: str
) -> "CachedEngine":
    """The engine the merge reads the shards' chunks back with (`where`: the cache, for messages)."""
    engine = CachedEngine(model, profile, merged_engine_info(reports), where)
    if _canonical(engine_identity(engine)) != _canonical(reports[0]["identity"]):
        raise EngineError(
            f"model {model.model_id} profile {profile.name!r}: the config changed since the shards were embedded "
            "(their cache identity differs from the merge's); rematerialize embeddings"
        )
    return engine


def _canonical(identity: Mapping[str, Any]) -> str:
    return json.dumps(identity, sort_keys=True, default=str)


def merged_engine_info(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The engine of the shards, which must all have stored under one cache identity: shards embedded by
    different engine software or weights (a mixed worker pool) would mix vectors, so that fails here."""
    identities = {_canonical(r["identity"]) for r in reports}
    if len(identities) != 1:
        seen = sorted({f"{r['engine_info']['engine']} {r['engine_info']['version']}" for r in reports})
        raise EngineError(
            f"the {len(reports)} shards were embedded under {len(identities)} different engine identities "
            f"({'; '.join(seen)}): their vectors cannot be merged; give every worker of the queue the same "
            "software and weights, then rematerialize embeddings"
        )
    started = [r for r in reports if r["engine_started"]]
    return dict((started or list(reports))[0]["engine_info"])


def totals(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The shards' work summed: what the unsharded step would have reported."""
    return {
        "cache": {k: sum(r["cache"][k] for r in reports) for k in ("hits", "misses", "corrupt")},
        "forward_calls": sum(r["forward_calls"] for r in reports),
        "engine_started": any(r["engine_started"] for r in reports),
        "seconds": sum(r["seconds"] for r in reports),
    }


class CachedEngine(Engine):
    """The shards' engine as the merge sees it: their identity (so the same cache keys), and nothing to run. A
    chunk missing from the cache is an error, never a silent re-embedding on the merging worker."""

    supported_outputs = frozenset(OutputType)

    def __init__(self, model: ModelConfig, profile: ResolvedProfile, info: Mapping[str, Any], where: str):
        self.name = str(info["engine"])
        super().__init__(model, profile)
        self._info = EngineInfo(**info)
        self._where = where

    def info(self) -> EngineInfo:
        return self._info

    def embed(self, texts: Sequence[str], kind: EmbedKind) -> np.ndarray:
        raise EngineError(
            f"merging shards: {len(texts)} {kind.value} texts of a shard are not in the embedding cache at "
            f"{self._where} (is the cache directory shared by every worker? was the entry removed?); "
            "rematerialize embeddings"
        )

    def _embed_prepared(self, texts: list[str], kind: EmbedKind) -> np.ndarray:
        return self.embed(texts, kind)
