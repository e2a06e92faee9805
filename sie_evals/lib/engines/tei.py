"""The `tei` engine: Hugging Face text-embeddings-inference, started when `text-embeddings-router` is
on PATH or reached at --tei-url. Speaks TEI's native API: POST /embed, GET /info."""

import contextlib
from typing import Any

from sie_evals.lib.config.weights import resolve_weights
from sie_evals.lib.engines.base import EmbedKind
from sie_evals.lib.engines.http import HttpEngine, Reply, weights_dims
from sie_evals.lib.servers import tei as tei_server
from sie_evals.lib.servers.managed import ServerCommand

TIMING_HEADERS = {
    "x-queue-time": "queue_ms",
    "x-tokenization-time": "tokenization_ms",
    "x-inference-time": "inference_ms",
    "x-total-time": "total_ms",
}


class TeiEngine(HttpEngine):
    name = "tei"
    native_prompt_names = True  # /embed takes `prompt_name`

    def software_version(self) -> str:
        # Constant: this is part of the cache key, which is computed before the server is reached.
        # The version the server reports is in info().extra["server_version"].
        return "text-embeddings-inference"

    def server_command(self) -> ServerCommand:
        weights = resolve_weights(self.model)
        self.expected_dims = weights_dims(weights)
        assert self.run_dir is not None
        return tei_server.command(self.model, self.profile, weights, self.batch_size, self.run_dir)

    def _start(self) -> None:
        if not self.url:
            tei_server.find_executable()  # the how-to-get-it error before anything else
        super()._start()
        try:
            info = self._request("GET", "/info").body
        except BaseException:
            self._stop()  # start() did not complete, so stop() would not run: stop the server here
            raise
        if isinstance(info, dict):
            self.server_details = {"server_version": info.get("version"), "server_model_id": info.get("model_id")}

    def _embed_request(self, texts: list[str], kind: EmbedKind) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"inputs": texts, "normalize": self.profile.normalize, "truncate": True}
        if prompt := self.profile.prompt_name(kind):  # one of the model's sentence-transformers prompts
            body["prompt_name"] = prompt
        return "/embed", body

    def _parse_vectors(self, body: Any) -> list[Any]:
        return body  # a JSON array of vectors; the base class checks its shape

    def _timing(self, reply: Reply) -> dict[str, float] | None:
        out = {}
        for header, key in TIMING_HEADERS.items():
            with contextlib.suppress(KeyError, ValueError):
                out[key] = float(reply.headers[header])
        return out or None
