"""The `openai` engine: any OpenAI-compatible embeddings server (vLLM, TEI's OpenAI route, SIE,
infinity, hosted APIs) at `--openai-url` or $SIE_EVALS_OPENAI_URL: `POST {url}/v1/embeddings`.

It behaves like the official OpenAI clients:
- The request's `model` is `--openai-model`, else the profile's `openai_model`, else the model id.
- The API key is read from the environment variable the profile names in `api_key_env`, else from
  $OPENAI_API_KEY when that is set (every OpenAI client's convention), and sent as a Bearer token. It is
  never part of the cache key, the report, a log line or an error message (any error text is scrubbed
  of it, and of a URL's user info, before it is raised); the report names the variable only.
- Each request waits at most $SIE_EVALS_OPENAI_TIMEOUT_S seconds (default 60) for the server, and
  is retried up to $SIE_EVALS_OPENAI_MAX_RETRIES times (default 2, as in openai-python) on 408, 409,
  429, 5xx, timeouts and connection errors, honouring `Retry-After` (lib/engines/http.py). A hung
  server therefore fails the eval after about timeout x (retries + 1).
Reply validation is the shared HTTP engine's.
"""

import os
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from sie_evals.lib.config.model_config import ModelConfig, ResolvedProfile
from sie_evals.lib.config.weights import resolve_weights
from sie_evals.lib.core.errors import ConfigError, EngineError, InputError
from sie_evals.lib.engines.base import EmbedKind
from sie_evals.lib.engines.http import HttpEngine, redact_url, weights_dims
from sie_evals.lib.servers.managed import ServerCommand

API_KEY_ENV = "OPENAI_API_KEY"  # read when the profile names no api_key_env
SETTINGS_PREFIX = "SIE_EVALS_OPENAI_"


class OpenAISettings(BaseSettings):
    """How the openai source talks to its server, from SIE_EVALS_OPENAI_<FIELD> (like its URL)."""

    model_config = SettingsConfigDict(env_prefix=SETTINGS_PREFIX, extra="ignore", frozen=True)

    timeout_s: float = Field(
        60.0, gt=0, le=3600, allow_inf_nan=False, description="Seconds to wait for a reply to one request."
    )
    max_retries: int = Field(2, ge=0, le=10, description="Retries of a request after a retryable failure.")


def openai_settings() -> OpenAISettings:
    """The settings from the environment; a malformed value is an input error naming the variable."""
    try:
        return OpenAISettings()
    except ValidationError as err:
        problems = "; ".join(
            f"${SETTINGS_PREFIX}{str(e['loc'][0]).upper()}: {e['msg']} (got {e.get('input')!r})" for e in err.errors()
        )
        raise InputError(f"source openai: invalid setting: {problems}") from None


class OpenAIEngine(HttpEngine):
    name = "openai"

    def __init__(
        self,
        model: ModelConfig,
        profile: ResolvedProfile,
        url: str | None = None,
        openai_model: str | None = None,
        **kw: Any,
    ):
        settings = openai_settings()
        kw.setdefault("timeout_s", settings.timeout_s)
        kw.setdefault("retries", settings.max_retries)
        super().__init__(model, profile, url=url, **kw)  # no URL: an InputError (an external server)
        self.request_model = openai_model or profile.openai_model or model.model_id
        self._api_key: str | None = None
        self.api_key_env: str | None = None  # the variable the key came from (its name is no secret)
        if profile.api_key_env:
            key = os.environ.get(profile.api_key_env, "")
            if not key:
                raise ConfigError(
                    f"{model.path}: profile {profile.name!r}: field 'api_key_env' names ${profile.api_key_env}, "
                    "which is not set (or empty) in this environment"
                )
            self._api_key, self.api_key_env = key, profile.api_key_env
        elif os.environ.get(API_KEY_ENV):
            self._api_key, self.api_key_env = os.environ[API_KEY_ENV], API_KEY_ENV
        # The served model is meant to be this config's model: when its weights are on disk, their
        # width is the width every reply must have; otherwise the first reply sets it.
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
        info.extra["api_key_env"] = self.api_key_env  # the variable's name, never its value
        info.extra["timeout_s"] = self.timeout_s
        info.extra["max_retries"] = self.retries
        return info

    def server_command(self) -> ServerCommand:  # never called: __init__ requires a URL
        raise InputError("source openai has no server to start; give --openai-url")

    def request_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def timeout_hint(self) -> str:
        return f"${SETTINGS_PREFIX}TIMEOUT_S"

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
