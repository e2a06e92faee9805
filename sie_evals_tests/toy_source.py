"""A toy compute source, all in this file: its engine (an OpenAI-style server at a URL the user gives; nothing to
start) and its row of the source table. A test adds it with `register_source(TOY)` (and removes it again with
`unregister_source(TOY.name)`); everything else (validation, CLI URL option, Dagster's EngineFactory) derives
from the row."""

from typing import Any

from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.sources import ServerMode, SourceSpec
from sie_evals.lib.engines.base import EmbedKind
from sie_evals.lib.engines.http import HttpEngine
from sie_evals.lib.servers.managed import ServerCommand


class ToyEngine(HttpEngine):
    """The toy source's engine: POST {url}/v1/embeddings of a server the user runs; nothing to start."""

    name = "toy"

    def __init__(self, model, profile, url: str | None = None, **kw: Any):
        super().__init__(model, profile, url=url, **kw)
        if not self.url:
            raise InputError("source toy needs a server: give its URL")

    def software_version(self) -> str:
        return "toy"

    def server_command(self) -> ServerCommand:
        raise InputError("source toy has no server to start")

    def _embed_request(self, texts: list[str], kind: EmbedKind) -> tuple[str, dict[str, Any]]:
        return "/v1/embeddings", {"model": self.model.model_id, "input": texts}

    def _parse_vectors(self, body: Any) -> list[Any]:
        return [item["embedding"] for item in sorted(body["data"], key=lambda item: item["index"])]


TOY = SourceSpec(
    "toy",
    engine="sie_evals_tests.toy_source:ToyEngine",
    options=("batch_size", "threads", "progress", "device"),
    takes_url=True,
    server=ServerMode.external,
    help="a toy OpenAI-style server (test)",
)
