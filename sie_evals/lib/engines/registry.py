"""Which engine serves which source: a lookup in the source table (lib/core/sources.py)."""

import importlib

from sie_evals.lib.config.model_config import ModelConfig, ResolvedProfile
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.sources import SourceKind, SourceSpec, source_spec
from sie_evals.lib.engines.base import Engine
from sie_evals.lib.engines.options import EngineOptions


def engine_class(spec: SourceSpec) -> type[Engine]:
    """The row's engine class, imported now (engines load their heavy dependencies lazily)."""
    if spec.kind != SourceKind.compute or not spec.engine:
        raise InputError(f"source {spec.name!r} is a reference source (read, not computed): it has no engine")
    module, _, name = spec.engine.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise TypeError(f"source {spec.name!r}: {spec.engine} is not an Engine subclass")
    return cls


def create_engine(
    source: str, model: ModelConfig, profile: ResolvedProfile, options: EngineOptions | None = None, **values
) -> Engine:
    """The engine of `source` for this model and profile. `options` (and `values`: EngineOptions fields or
    `<source>_url=` keywords) are handed over as the row says: the fields in its `options`, and its server
    URL as `url` where it takes one (None: the engine reads $SIE_EVALS_<SOURCE>_URL, else starts a server)."""
    spec = source_spec(source)
    cls = engine_class(spec)
    opts = (options or EngineOptions()).replace(**values)
    kwargs = {name: getattr(opts, name) for name in spec.options}
    if spec.takes_url:
        kwargs["url"] = opts.server_urls.get(spec.name)
    return cls(model, profile, **kwargs)
