"""What a perf run sends and how: the texts (a task's own, as its task type says: TaskType.perf_texts, or texts
of exactly N tokens cut from them: lib/perf/workloads.py) with their token counts by the model's own tokenizer,
one timed request through an engine, the fast generator's HTTP target, and the generator's own overhead."""

import functools
from typing import Any

import numpy as np

from sie_evals.lib.config.model_config import ModelConfig, ResolvedProfile
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.engines import muvera
from sie_evals.lib.engines.base import EmbedKind, Engine
from sie_evals.lib.engines.vectors import SparseVectors
from sie_evals.lib.perf.workloads import fixed_token_texts
from sie_evals.lib.quality.task_types import PERF_WORKLOADS, task_type_for
from sie_evals.lib.tasks.base import TaskDataBase
from sie_evals.lib.tasks.spec import TaskSpec

FIXED_TOKEN_TEXTS = 256  # distinct texts per --tokens length


def _tokenizer(model: ModelConfig):
    from sie_evals.lib.config.weights import resolve_weights

    return _load_tokenizer(str(resolve_weights(model)))


@functools.cache
def _load_tokenizer(weights: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(weights)


def token_counts(model: ModelConfig, profile: ResolvedProfile, texts: list[str]) -> list[int]:
    """Tokens per text by the model's own tokenizer, truncated like the model input (special tokens
    included): the one counting rule for tok/s, whatever engine serves the model."""
    enc = _tokenizer(model)(texts, truncation=True, max_length=profile.max_seq_length)
    return [len(ids) for ids in enc["input_ids"]]


class PerfWorkload:
    """The texts a perf run sends and their token counts: the task's corpus or queries as they are, or
    (tokens=N) texts of exactly N tokens cut from them."""

    def __init__(self, model: ModelConfig, profile: ResolvedProfile, spec: TaskSpec, data: TaskDataBase, workload: str):
        if workload not in PERF_WORKLOADS:
            raise InputError(f"--workload must be one of {', '.join(PERF_WORKLOADS)}, got {workload!r}")
        self.kind, self.texts = task_type_for(spec).perf_texts(data, workload)
        self.model, self.profile = model, profile
        self.prefix = profile.document_prefix if self.kind == EmbedKind.document else profile.query_prefix
        self._cache: dict[int | None, tuple[list[str], list[int]]] = {}

    def texts_and_counts(self, tokens: int | None) -> tuple[list[str], list[int]]:
        if tokens not in self._cache:
            if tokens is None:
                texts = self.texts
                counts = token_counts(self.model, self.profile, [self.prefix + t for t in texts])
            else:
                if tokens > self.profile.max_seq_length:
                    raise InputError(
                        f"--tokens {tokens}: longer than the profile's max_seq_length "
                        f"{self.profile.max_seq_length} (the model would truncate it)"
                    )
                texts = fixed_token_texts(_tokenizer(self.model), self.texts, tokens, FIXED_TOKEN_TEXTS, self.prefix)
                counts = [tokens] * len(texts)
            self._cache[tokens] = (texts, counts)
        return self._cache[tokens]


def send_timed(engine: Engine, batch: list[str], kind: EmbedKind, sizes: list | None = None) -> dict[str, float] | None:
    """One perf request; returns the server's own timing of it when the engine reports one. `sizes`
    collects sparse nnz / tokens per text of non-dense outputs."""
    raw = engine.embed(batch, kind)
    muvera.postprocess(engine.profile, kind == EmbedKind.query, raw)  # MUVERA's FDE is part of the cost
    if sizes is not None and not isinstance(raw, np.ndarray):
        sizes.append(raw.nnz_per_row() if isinstance(raw, SparseVectors) else raw.lengths())
    timing = getattr(engine, "last_server_timing", None)
    return timing() if callable(timing) else timing


def perf_target(engine: Engine, texts: list[str], batch_size: int, kind: EmbedKind, replies: list | None = None):
    """(HttpTarget, check, redact) for the fast generator when the engine is one plain JSON request per
    perf request (lib/perf/aio.py); (None, None, None) for the thread generator otherwise. The first
    reply checked is appended to `replies`."""
    from sie_evals.lib.engines.http import HttpEngine
    from sie_evals.lib.perf.load import prepared_target, request_items

    if not isinstance(engine, HttpEngine):
        return None, None, None
    target = prepared_target(
        lambda items: engine.perf_request([texts[j] for j in items], kind), len(texts), batch_size, engine.timeout_s
    )
    if target is None:
        return None, None, None

    def check(i: int, body: bytes) -> None:
        engine.check_perf_reply(body, len(request_items(i, texts, batch_size)))
        if replies is not None and not replies:
            replies.append(body)

    return target, check, engine.redact


def calibrate_overhead(spec, texts: list[str], counts: list[int], target, reply: bytes) -> dict[str, Any]:
    """The generator's own latency at this load against a null endpoint answering `reply` (HTTP
    engines), or with a send that returns at once (in-process engines): lib/perf/overhead.py."""
    import dataclasses
    from urllib.parse import urlsplit

    from sie_evals.lib.perf.aio import client_of
    from sie_evals.lib.perf.load import run_load
    from sie_evals.lib.perf.overhead import calibration_spec, null_endpoint, overhead_summary

    calib = calibration_spec(spec)
    if target is None:
        result = run_load(lambda batch: None, texts, counts, calib)
        return overhead_summary(result.metrics(), "thread generator, a send that returns at once")
    with null_endpoint(reply) as base:
        client = client_of(target)  # the real target's client, though the null endpoint is http://
        null = dataclasses.replace(target, url=base + urlsplit(target.url).path, client=client)
        result = run_load(None, texts, counts, calib, target=null)
    return overhead_summary(result.metrics(), f"{client} generator, the same requests to a loopback null endpoint")
