"""The one table of result sources: adding a source is one `SourceSpec` row here (plus its engine class).

Compute sources embed texts through an engine; reference sources are read, not computed (published
benchmark scores, saved targets, saved measurements). Everything else derives from the rows:
`COMPUTE_SOURCES` / `ALL_SOURCES` (live views of the table), engine construction
(`engines.registry.create_engine` imports `engine` and hands it the `options` it takes), the server URL
of each source that takes one (`--<name>-url`, env `SIE_EVALS_<NAME>_URL`, `EngineOptions.server_urls`
and the Dagster `EngineFactory` resource's `server_urls`), whether the harness starts a server, and the
`sie-bench servers install` recipes (lib/servers/install.py).

Public API (used by engines/registry.py, the CLI and defs/evals/resources.py; engines are built by
`lib.engines.create_engine(source, model, profile, EngineOptions(server_urls={source: url}, ...))`):
- `SOURCES: Mapping[str, SourceSpec]`, `source_spec(name)` (unknown name: UnknownNameError),
  `register_source(spec)` (a plugin or a test adds a row; `unregister_source(name)` removes it);
- `COMPUTE_SOURCES`, `REFERENCE_SOURCES`, `ALL_SOURCES`: sequences of names, read from the table on use;
- `url_sources()`: the rows that take a server URL; `DEFAULT_SOURCE`: the row marked `default`.
This module imports nothing else of lib/ (core is the floor): the engine class is a lazy import path.
"""

import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from sie_evals.lib.core.errors import InputError, UnknownNameError


class SourceKind(StrEnum):
    compute = "compute"  # an engine embeds the texts
    reference = "reference"  # read, not computed


class ServerMode(StrEnum):
    none = "none"  # in-process: no server
    managed = "managed"  # the harness starts one (lib/servers/<name>.py) unless a URL is given
    external = "external"  # a running server at the URL the user gives (nothing to start)


@dataclass(frozen=True)
class InstallRecipe:
    """How `sie-bench servers install <name>` provisions the server's own venv (lib/servers/install.py)."""

    version: str
    python: str  # major.minor the venv needs
    # pip install steps, in order. torch comes first where it matters, pinned, so that pip keeps it.
    steps: tuple[tuple[str, ...], ...]
    executable: str  # console script inside the venv
    note: str = ""


@dataclass(frozen=True)
class SourceSpec:
    name: str
    kind: SourceKind = SourceKind.compute
    engine: str | None = None  # "module:Class" of the Engine subclass, imported when an engine is built
    options: tuple[str, ...] = ()  # the EngineOptions fields its engine takes, as keyword arguments
    takes_url: bool = False  # a server URL: engine keyword `url`, --<name>-url, $SIE_EVALS_<NAME>_URL
    server: ServerMode = ServerMode.none
    install: InstallRecipe | None = None
    # The default source (one row): what a model config evaluates when it names no sources, the reference
    # of parity, and the in-process engine Finesse and the output-profile partitions run through.
    default: bool = False
    help: str = ""  # what the source is, one line
    url_help: str = ""  # the --<name>-url option's help (its env variable is appended)

    @property
    def url_field(self) -> str:
        """The option's parameter name, and the key of the legacy `<name>_url=` keyword."""
        return f"{self.name.replace('-', '_')}_url"

    @property
    def url_option(self) -> str:
        return f"--{self.name}-url"

    @property
    def url_env(self) -> str:
        return f"SIE_EVALS_{self.name.upper().replace('-', '_')}_URL"

    @property
    def url_option_help(self) -> str:
        return f"{self.url_help or f'Source {self.name}: a running server at this URL'} (${self.url_env})."


_RUN_OPTIONS = ("batch_size", "threads", "progress", "device")

_SIE = InstallRecipe(
    version="0.10.1",
    python="3.12",
    # sie-server 0.10.1 requires Python >=3.12,<3.13 and torch>=2.9,<2.10; on 3.12 pip takes PyPI's torch
    # (a CUDA build: ~4 GB with the nvidia-* wheels, ~8 GB venv), which runs on the CPU when there is no GPU.
    steps=(("sie-server==0.10.1", "sie-sdk==0.10.1"),),
    executable="sie-server",
    note="about 8 GB and 5-10 minutes on a fresh machine (PyPI torch for cp312 is the CUDA build)",
)
_INFINITY = InstallRecipe(
    version="0.0.78",
    python="3.11",
    # The local CPU wheel first and pinned again with infinity: otherwise pip pulls a CUDA torch.
    # Never the [all] extra: its vision deps pull a CUDA torch too.
    steps=(("torch==2.13.0",), ("infinity-emb[server,torch]==0.0.78", "torch==2.13.0")),
    executable="infinity_emb",
    note="about 1.5 GB (CPU torch 2.13.0)",
)

_TABLE: dict[str, SourceSpec] = {
    s.name: s
    for s in (
        SourceSpec(
            "local",
            engine="sie_evals.lib.engines.local:LocalEngine",
            options=_RUN_OPTIONS,
            default=True,
            help="in-process transformers + torch (or its ONNX export), the reference of parity",
        ),
        SourceSpec(
            "sie",
            engine="sie_evals.lib.engines.sie:SieEngine",
            options=_RUN_OPTIONS,
            takes_url=True,
            server=ServerMode.managed,
            install=_SIE,
            help="SIE (sie-server in its own venv), started by the harness",
            url_help="Use a running SIE server at this URL instead of starting one",
        ),
        SourceSpec(
            "infinity",
            engine="sie_evals.lib.engines.infinity:InfinityEngine",
            options=_RUN_OPTIONS,
            takes_url=True,
            server=ServerMode.managed,
            install=_INFINITY,
            help="infinity (infinity_emb in its own venv), started by the harness",
            url_help="Use a running infinity server at this URL",
        ),
        SourceSpec(
            "tei",
            engine="sie_evals.lib.engines.tei:TeiEngine",
            options=_RUN_OPTIONS,
            takes_url=True,
            server=ServerMode.managed,  # text-embeddings-router from PATH (not pip-installable)
            help="text-embeddings-inference (text-embeddings-router on PATH), started by the harness",
            url_help="Use a running TEI server at this URL",
        ),
        SourceSpec(
            "openai",
            engine="sie_evals.lib.engines.openai:OpenAIEngine",
            options=(*_RUN_OPTIONS, "openai_model"),
            takes_url=True,
            server=ServerMode.external,
            help="an OpenAI-compatible server the user runs (never started by the harness)",
            url_help="Source openai: an OpenAI-compatible server, POST {url}/v1/embeddings",
        ),
        SourceSpec(
            "fastembed",
            engine="sie_evals.lib.engines.fastembed:FastEmbedEngine",
            options=("batch_size", "threads", "progress"),
            help="in-process fastembed over this harness's ONNX export",
        ),
        SourceSpec("benchmark", SourceKind.reference, help="MTEB's published scores (results repository)"),
        SourceSpec("targets", SourceKind.reference, help="the saved targets of this model and task"),
        SourceSpec("measurements", SourceKind.reference, help="the latest saved measurement"),
    )
}

SOURCES: Mapping[str, SourceSpec] = types.MappingProxyType(_TABLE)
(DEFAULT_SOURCE,) = (s.name for s in _TABLE.values() if s.default)


def source_spec(name: str) -> SourceSpec:
    try:
        return _TABLE[name]
    except KeyError:
        raise UnknownNameError("source", name, list(_TABLE)) from None


def register_source(spec: SourceSpec) -> None:
    """Add a row (a plugin's or a test's source). A name already in the table is an error."""
    if spec.name in _TABLE:
        raise ValueError(f"source {spec.name!r} is already in the table")
    if spec.kind == SourceKind.compute and not spec.engine:
        raise ValueError(f"compute source {spec.name!r} needs an engine class path")
    if spec.default:
        raise ValueError(f"source {spec.name!r}: the default source is {DEFAULT_SOURCE!r}, one row only")
    _TABLE[spec.name] = spec


def unregister_source(name: str) -> None:
    _TABLE.pop(name, None)


def url_sources() -> list[SourceSpec]:
    return [s for s in _TABLE.values() if s.takes_url]


class _Names(Sequence[str]):
    """The names of the table's rows of one kind (or all), in table order, read on every use: a source
    registered later is in every view at once."""

    def __init__(self, kind: SourceKind | None):
        self._kind = kind

    def _names(self) -> tuple[str, ...]:
        return tuple(n for n, s in _TABLE.items() if self._kind is None or s.kind == self._kind)

    def __getitem__(self, i):  # type: ignore[override]
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __add__(self, other: Sequence[str]) -> tuple[str, ...]:
        return self._names() + tuple(other)

    def __eq__(self, other: object) -> bool:
        return self._names() == (tuple(other) if isinstance(other, Sequence) else other)

    def __hash__(self) -> int:
        return hash(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


COMPUTE_SOURCES: Sequence[str] = _Names(SourceKind.compute)
REFERENCE_SOURCES: Sequence[str] = _Names(SourceKind.reference)
ALL_SOURCES: Sequence[str] = _Names(None)


def server_urls_from(options: Mapping[str, object], pairs: Sequence[str] = ()) -> dict[str, str]:
    """source -> URL from the `<name>_url` entries of `options` (the --<name>-url options) and from
    `SOURCE=URL` pairs (--server-url, for any row, one registered at run time included). An unknown
    source, one that takes no URL, or two different URLs for one source: InputError naming the option."""
    urls: dict[str, str] = {}

    def put(name: str, url: str, given_as: str) -> None:
        spec = _TABLE.get(name)
        if spec is None or not spec.takes_url:
            takes = ", ".join(s.name for s in url_sources())
            raise InputError(f"{given_as}: source {name!r} takes no server URL (sources that do: {takes})")
        if urls.get(name, url) != url:
            raise InputError(f"{given_as}: a second, different URL for source {name!r}")
        urls[name] = url

    for spec in url_sources():
        value = options.get(spec.url_field)
        if value:
            put(spec.name, str(value), spec.url_option)
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise InputError(f"--server-url {pair!r}: expected SOURCE=URL, e.g. sie=http://127.0.0.1:8080")
        put(name.strip(), url.strip(), "--server-url")
    return urls
