"""The `openai` engine: any OpenAI-compatible embeddings server (vLLM, TEI's OpenAI route, SIE,
infinity, hosted APIs) at `--openai-url` or $SIE_EVALS_OPENAI_URL: `POST {url}/v1/embeddings`.

The request's `model` is `--openai-model`, else the profile's `openai_model`, else the model id. The
API key is read from the environment variable the profile names in `api_key_env` and sent as a
Bearer token; it is never part of the cache key, the report, a log line or an error message (any
error text is scrubbed of it, and of a URL's user info, before it is raised). Retries, timeouts and
reply validation are the shared HTTP engine's.
"""

import os
from typing import Any

from sie_evals.lib.config.model_config import ModelConfig, ResolvedProfile
from sie_evals.lib.core.errors import ConfigError, EngineError, InputError
from sie_evals.lib.engines.base import EmbedKind
from sie_evals.lib.engines.http import HttpEngine, redact_url, weights_dims
from sie_evals.lib.servers.managed import ServerCommand


class OpenAIEngine(HttpEngine):
    name = "openai"
    url_env = "SIE_EVALS_OPENAI_URL"

    def __init__(
        self,
        model: ModelConfig,
        profile: ResolvedProfile,
        url: str | None = None,
        openai_model: str | None = None,
        **kw: Any,
    ):
        super().__init__(model, profile, url=url, **kw)
        if not self.url:
            raise InputError(
                "source openai needs a server: give --openai-url URL or set $SIE_EVALS_OPENAI_URL "
                "(any OpenAI-compatible server; requests go to POST {url}/v1/embeddings)"
            )
        self.request_model = openai_model or profile.openai_model or model.model_id
        self._api_key: str | None = None
        if profile.api_key_env:
            key = os.environ.get(profile.api_key_env, "")
            if not key:
                raise ConfigError(
                    f"{model.path}: profile {profile.name!r}: field 'api_key_env' names ${profile.api_key_env}, "
                    "which is not set (or empty) in this environment"
                )
            self._api_key = key
        # The served model is meant to be this config's model: when its weights are on disk, their
        # width is the width every reply must have; otherwise the first reply sets it.
        from sie_evals.lib.engines.local import resolve_weights

        try:
            self.expected_dims = weights_dims(resolve_weights(model))
        except ConfigError:
            self.expected_dims = None

    def software_version(self) -> str:
        return "openai-compatible /v1/embeddings"

    def weights_id(self) -> str:
        # Whatever that server serves under that model name: URL (without user info) and name key the cache.
        return f"server:{redact_url(self.url or '')}:{self.request_model}"

    def info(self):
        info = super().info()
        info.extra["openai_model"] = self.request_model
        info.extra["api_key_env"] = self.profile.api_key_env  # the variable's name, never its value
        return info

    def server_command(self) -> ServerCommand:  # never called: __init__ requires a URL
        raise InputError("source openai has no server to start; give --openai-url")

    def request_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def redact(self, text: str) -> str:
        text = super().redact(text)
        return text.replace(self._api_key, "***") if self._api_key else text

    def _embed_request(self, texts: list[str], kind: EmbedKind) -> tuple[str, dict[str, Any]]:
        assert self._base is not None
        path = "/embeddings" if self._base[3].endswith("/v1") else "/v1/embeddings"
        return path, {"model": self.request_model, "input": texts, "encoding_format": "float"}

    def _parse_vectors(self, body: Any) -> list[Any]:
        return parse_openai_embeddings(self.name, body)


def parse_openai_embeddings(engine: str, body: Any) -> list[Any]:
    """The vectors of an OpenAI-style embeddings reply, in input order (each item carries its index)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise EngineError(f"{engine}: embeddings reply has no 'data' list: {str(body)[:200]}")
    try:
        items = sorted(data, key=lambda d: d["index"])
        if [d["index"] for d in items] != list(range(len(items))):
            raise EngineError(f"{engine}: reply indices are not 0..{len(items) - 1}")
        return [d["embedding"] for d in items]
    except (KeyError, TypeError):
        raise EngineError(f"{engine}: a reply item lacks 'index' or 'embedding'") from None
