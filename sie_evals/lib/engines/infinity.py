"""The `infinity` engine: infinity-emb 0.0.78, started by the harness or at --infinity-url.

Embeds through its OpenAI-style `POST /embeddings` route."""

from typing import Any

from sie_evals.lib.config.weights import resolve_weights
from sie_evals.lib.engines.base import EmbedKind
from sie_evals.lib.engines.http import HttpEngine, weights_dims
from sie_evals.lib.engines.openai import parse_openai_embeddings
from sie_evals.lib.servers import infinity as infinity_server
from sie_evals.lib.servers import install
from sie_evals.lib.servers.managed import ServerCommand


class InfinityEngine(HttpEngine):
    name = "infinity"

    def software_version(self) -> str:
        if self.url:
            return "infinity-emb (running at --infinity-url)"
        return f"infinity-emb {install.installed_version('infinity')}"

    def server_command(self) -> ServerCommand:
        weights = resolve_weights(self.model)
        self.expected_dims = weights_dims(weights)
        assert self.run_dir is not None
        return infinity_server.command(
            self.model, self.profile, weights, self.device, self.batch_size, self.run_dir, self.threads
        )

    def _embed_request(self, texts: list[str], kind: EmbedKind) -> tuple[str, dict[str, Any]]:
        # infinity's /embeddings has no query/document flag: the profile's prefixes carry it.
        return "/embeddings", {"model": self.model.model_id, "input": texts, "encoding_format": "float"}

    def _parse_vectors(self, body: Any) -> list[Any]:
        return parse_openai_embeddings(self.name, body)  # OpenAI-style items, each with its input index
