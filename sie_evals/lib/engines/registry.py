"""Which engine serves which source."""

from sie_evals.lib.config.model_config import ModelConfig, ResolvedProfile
from sie_evals.lib.core.errors import InputError, UnknownNameError
from sie_evals.lib.core.sources import ALL_SOURCES, COMPUTE_SOURCES
from sie_evals.lib.engines.base import Engine

# Compute sources whose engine is implemented in this version.
IMPLEMENTED: tuple[str, ...] = ("local", "sie", "infinity", "tei", "openai", "fastembed")
LOCAL_OPTIONS = ("batch_size", "threads", "progress", "device")
SERVER_OPTIONS = ("batch_size", "threads", "progress", "device")


def create_engine(source: str, model: ModelConfig, profile: ResolvedProfile, **options) -> Engine:
    """`options` are EngineOptions.for_engine(): each engine takes the ones that apply to it
    (`<source>_url` becomes the server engine's `url`)."""
    if source not in ALL_SOURCES:
        raise UnknownNameError("source", source, list(ALL_SOURCES))
    if source not in COMPUTE_SOURCES:
        raise InputError(f"source {source!r} is a reference source (read, not computed): it has no engine")
    if source == "local":
        from sie_evals.lib.engines.local import LocalEngine

        return LocalEngine(model, profile, **{k: v for k, v in options.items() if k in LOCAL_OPTIONS})
    if source == "fastembed":
        from sie_evals.lib.engines.fastembed import FastEmbedEngine

        opts = {k: v for k, v in options.items() if k in ("batch_size", "threads", "progress")}
        return FastEmbedEngine(model, profile, **opts)
    server_opts = {k: v for k, v in options.items() if k in SERVER_OPTIONS}
    server_opts["url"] = options.get(f"{source}_url")
    if source == "sie":
        from sie_evals.lib.engines.sie import SieEngine

        return SieEngine(model, profile, **server_opts)
    if source == "infinity":
        from sie_evals.lib.engines.infinity import InfinityEngine

        return InfinityEngine(model, profile, **server_opts)
    if source == "tei":
        from sie_evals.lib.engines.tei import TeiEngine

        return TeiEngine(model, profile, **server_opts)
    if source == "openai":
        from sie_evals.lib.engines.openai import OpenAIEngine

        return OpenAIEngine(model, profile, openai_model=options.get("openai_model"), **server_opts)
    raise InputError(
        f"source {source!r} is not implemented in this version of sie-evals; implemented: {', '.join(IMPLEMENTED)}"
    )
