"""The `sie` engine: the real SIE server (`sie-server` 0.10.1), started by the harness or at --sie-url.

Embeds through `POST /v1/encode/{model}` with JSON in and out, and keeps SIE's per-request server
timing (queue, tokenization, inference ms) as `last_server_timing` for perf evals.
"""

import contextlib
from typing import Any

from sie_evals.lib.config.model_config import OutputType
from sie_evals.lib.config.weights import resolve_weights
from sie_evals.lib.core.errors import EngineError, InputError
from sie_evals.lib.engines.base import EmbedKind
from sie_evals.lib.engines.http import HttpEngine, Reply, weights_dims
from sie_evals.lib.engines.sie_wire import parse_sie_items, vocab_size
from sie_evals.lib.engines.vectors import concat
from sie_evals.lib.servers import install
from sie_evals.lib.servers import sie as sie_server
from sie_evals.lib.servers.managed import ServerCommand

TIMING_HEADERS = {
    "x-queue-time": "queue_ms",
    "x-tokenization-time": "tokenization_ms",
    "x-inference-time": "inference_ms",
    "x-total-time": "total_ms",
}


class SieEngine(HttpEngine):
    name = "sie"
    # SIE serves dense, sparse and multivector outputs where the model's adapter produces them; the
    # server (or, for a server the harness starts, lib/servers/sie.py) refuses the others clearly.
    supported_outputs = frozenset(OutputType)

    def software_version(self) -> str:
        if self.url:
            return "sie-server (running at --sie-url)"
        return f"sie-server {install.installed_version('sie')}"

    def server_command(self) -> ServerCommand:
        weights = resolve_weights(self.model)
        dims = weights_dims(weights)
        if dims is None:
            raise EngineError(f"sie: cannot tell the embedding width of {weights} (no config.json hidden_size)")
        self.expected_dims = dims
        if self.profile.output == OutputType.sparse:
            dims = vocab_size(weights) or 0
        assert self.run_dir is not None
        return sie_server.command(self.model, self.profile, weights, dims, self.device, self.threads, self.run_dir)

    def _embed_request(self, texts: list[str], kind: EmbedKind) -> tuple[str, dict[str, Any]]:
        params = {"output_types": [self.profile.output.value], "options": {"is_query": kind == EmbedKind.query}}
        body = {"items": [{"text": t} for t in texts], "params": params}
        return f"/v1/encode/{self.model.model_id}", body

    def _parse_vectors(self, body: Any) -> list[Any]:
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise EngineError(f"sie: encode reply has no 'items' list: {str(body)[:200]}")
        vectors = []
        for i, item in enumerate(items):
            dense = item.get("dense") if isinstance(item, dict) else None
            values = dense.get("values") if isinstance(dense, dict) else None
            if values is None:
                raise EngineError(f"sie: encode reply item {i} has no dense.values")
            vectors.append(values)
        return vectors

    def _embed_prepared(self, texts: list[str], kind: EmbedKind):
        if self.profile.output == OutputType.dense:
            return super()._embed_prepared(texts, kind)
        return self._embed_outputs(texts, kind)

    def _embed_outputs(self, texts: list[str], kind: EmbedKind):
        """Sparse or multivector outputs, one request per batch, each reply item checked (engines/sie_wire.py)."""
        parts, timing = [], None
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            path, body = self._embed_request(batch, kind)
            reply = self._request("POST", path, body)
            with self._count_lock:
                self.forward_calls += 1
            items = reply.body.get("items") if isinstance(reply.body, dict) else None
            if not isinstance(items, list) or len(items) != len(batch):
                raise EngineError(f"sie: asked for {len(batch)} items, the encode reply has {str(items)[:200]}")
            parts.append(parse_sie_items(items, self.profile.output, self._vocab_size(), self.name))
            if t := self._timing(reply):
                timing = {k: (timing or {}).get(k, 0.0) + v for k, v in t.items()}
        self._local.timing = timing
        return concat(parts)

    def _vocab_size(self) -> int | None:
        """The model's vocabulary (sparse indices must lie below it), when its weights are here."""
        if self.profile.output != OutputType.sparse:
            return None
        try:
            return vocab_size(resolve_weights(self.model))
        except InputError:  # weights not installed here (a remote --sie-url): the reply's dims must do
            return None

    def _timing(self, reply: Reply) -> dict[str, float] | None:
        timing = reply.body.get("timing") if isinstance(reply.body, dict) else None
        out: dict[str, float] = {}
        if isinstance(timing, dict):
            out = {k: float(v) for k, v in timing.items() if isinstance(v, int | float)}
        for header, key in TIMING_HEADERS.items():
            if key not in out and header in reply.headers:
                with contextlib.suppress(ValueError):
                    out[key] = float(reply.headers[header])
        return out or None
