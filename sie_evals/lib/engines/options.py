"""How engines are built: the options every run passes, one mapping of server URLs for the sources
that take one (lib/core/sources.py decides which do)."""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sie_evals.lib.core.sources import source_spec, url_sources


@dataclass(frozen=True)
class EngineOptions:
    batch_size: int | None = None
    threads: int | None = None
    progress: bool = False
    device: str | None = None  # local engine and started servers: cpu (default), cuda, auto...
    # source -> a running server to use instead of starting one (default: $SIE_EVALS_<SOURCE>_URL, else
    # the harness starts one where the source's row says it can)
    server_urls: Mapping[str, str] = field(default_factory=dict, hash=False)
    openai_model: str | None = None  # the request's `model` (default: the profile's openai_model, else model_id)

    @classmethod
    def of(cls, **values: Any) -> "EngineOptions":
        """EngineOptions from fields and `<source>_url=` keywords (the CLI's and older callers' names)."""
        return cls().replace(**values)

    def replace(self, **values: Any) -> "EngineOptions":
        """A copy with fields and `<source>_url=` keywords set; a None URL leaves that source unset."""
        names = {f.name for f in dataclasses.fields(self)}
        url_keys = {s.url_field: s.name for s in url_sources()}
        urls = dict(self.server_urls)
        fields: dict[str, Any] = {}
        for key, value in values.items():
            if key in names:
                fields[key] = value
            elif key in url_keys:
                urls[url_keys[key]] = value
            else:
                raise TypeError(f"EngineOptions has no option {key!r}")
        if "server_urls" in fields:
            urls.update(fields.pop("server_urls") or {})
        return dataclasses.replace(self, **fields, server_urls={k: v for k, v in urls.items() if v})

    def for_engine(self) -> dict[str, Any]:
        """Every option as keywords (`<source>_url` for each URL given): `create_engine(..., **this)`."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "server_urls"}
        out.update({source_spec(s).url_field: url for s, url in self.server_urls.items()})
        return out
