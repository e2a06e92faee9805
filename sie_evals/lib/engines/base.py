"""The engine interface every source implements.

An engine turns texts into float32 vectors. Servers have a lifecycle (start/stop); in-process
engines load lazily. Query/document prefixes from the profile are applied here, once, so every
engine sees exactly the same input strings.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Self

import numpy as np

from sie_evals.lib.config.model_config import ModelConfig, OutputType, ResolvedProfile
from sie_evals.lib.config.weights import resolve_weights
from sie_evals.lib.core.errors import EngineError
from sie_evals.lib.engines.validation import check_engine_supports, validate_embeddings, validate_output


class EmbedKind(StrEnum):
    query = "query"
    document = "document"


@dataclass(frozen=True)
class EngineInfo:
    engine: str  # source name: local, sie, infinity, tei
    version: str  # engine software versions, e.g. "transformers 5.23.0; torch 2.13.0+cpu"
    model_id: str
    model_revision: str | None
    weights: str  # where the weights came from, as configured
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine(ABC):
    """Subclasses implement `_embed_batchless` on prefixed texts and `info`."""

    name: str = "engine"
    supported_outputs: frozenset[OutputType] = frozenset({OutputType.dense})  # see engines/vectors.py

    def __init__(self, model: ModelConfig, profile: ResolvedProfile):
        check_engine_supports(self.name, self.supported_outputs, profile)
        self.model = model
        self.profile = profile
        self.forward_calls = 0  # how many model forward passes / requests this engine made

    # Lifecycle. Engines start lazily, on the first embed() that misses the cache, so a fully cached
    # run never loads a model or starts a server; `with engine:` guarantees stop() on every exit path.
    _started = False

    def start(self) -> None:
        """Make the engine ready (load weights, start a server). Idempotent."""
        if not self._started:
            self._start()
            self._started = True

    def stop(self) -> None:
        """Release what start() acquired. Safe to call more than once, or without start()."""
        if self._started:
            self._started = False
            self._stop()

    @property
    def started(self) -> bool:
        return self._started

    def _start(self) -> None:  # noqa: B027 - optional hook
        pass

    def _stop(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @abstractmethod
    def info(self) -> EngineInfo:
        """What produced the vectors: must be cheap and must not load the model."""

    @abstractmethod
    def _embed_prepared(self, texts: list[str], kind: EmbedKind) -> np.ndarray:
        """Embed already-prefixed texts; return an array of shape (len(texts), dims). `kind` reaches
        the engine as a flag too, for servers that treat queries and documents differently."""

    # Engines whose server takes a prompt name itself (TEI's `prompt_name`); the others get the prompt's
    # text prepended here, as sentence-transformers does, so every engine sees the same input.
    native_prompt_names = False

    def prefix(self, kind: EmbedKind) -> str:
        prefix = self.profile.query_prefix if kind == EmbedKind.query else self.profile.document_prefix
        name = self.profile.prompt_name(kind.value)
        if name and not self.native_prompt_names:
            prefix = model_prompt(self.model, self.profile.name, name) + prefix
        return prefix

    def embed(self, texts: Sequence[str], kind: EmbedKind) -> np.ndarray:
        """Vectors for `texts` as float32 (n, dims), or the profile's sparse/multivector output
        (engines/vectors.py). Validates what the engine returned."""
        if not texts:
            raise EngineError(f"{self.name}: nothing to embed")
        self.start()
        prefix = self.prefix(kind)
        vectors = self._embed_prepared([prefix + t for t in texts], kind)
        if self.profile.output != OutputType.dense:
            return validate_output(vectors, len(texts), self.name, self.profile)
        return validate_embeddings(vectors, len(texts), self.name)


def model_prompt(model: ModelConfig, profile: str, name: str) -> str:
    """The text of prompt `name` from the model's config_sentence_transformers.json."""
    import json
    from pathlib import Path

    from sie_evals.lib.core.errors import ConfigError

    path = Path(resolve_weights(model)) / "config_sentence_transformers.json"
    try:
        prompts = json.loads(path.read_text()).get("prompts") or {}
    except (OSError, ValueError, AttributeError):
        prompts = {}
    if name not in prompts:
        raise ConfigError(
            f"{model.path}: profile {profile!r}: prompt {name!r} is not among the model's prompts "
            f"({', '.join(sorted(prompts)) or 'none'}) in {path}"
        )
    return str(prompts[name])
