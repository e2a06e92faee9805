"""A new source is one engine class plus one row in the source table (lib/core/sources.py).

The toy source: `ToyEngine` below, an HTTP engine whose server is a small JSON embedding service on
127.0.0.1 backed by the real local engine's model (all-MiniLM-L6-v2), registered at test time through
the public API (`register_source`) and nowhere else. From the CLI it takes its URL as
`--server-url toy=URL` or `$SIE_EVALS_TOY_URL` (the row's derived setting), and its vectors, hence its
metrics, equal the local source's. (The Dagster half, the EngineFactory resource's `server_urls`
config, is in the Dagster tests.)"""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.core.errors import EngineError
from sie_evals.lib.core.sources import (
    ALL_SOURCES,
    COMPUTE_SOURCES,
    ServerMode,
    SourceSpec,
    register_source,
    source_spec,
    unregister_source,
)
from sie_evals.lib.engines import EmbedKind, create_engine
from sie_evals.lib.engines.http import HttpEngine
from sie_evals.lib.engines.options import EngineOptions
from sie_evals.lib.servers.managed import ServerCommand

SLICE = ["--limit-queries", "20", "--corpus-size", "300"]


class ToyEngine(HttpEngine):
    """POST {url}/embed {"texts": [...], "kind": "query"|"document"} -> {"vectors": [[...], ...]}."""

    name = "toy"

    def server_command(self) -> ServerCommand:  # never called: the row's server is external
        raise AssertionError("toy has no server to start")

    def _embed_request(self, texts: list[str], kind: EmbedKind) -> tuple[str, dict[str, Any]]:
        return "/embed", {"texts": texts, "kind": kind.value}

    def _parse_vectors(self, body: Any) -> list[Any]:
        if not isinstance(body, dict) or not isinstance(body.get("vectors"), list):
            raise EngineError(f"toy: reply has no 'vectors' list: {str(body)[:200]}")
        return body["vectors"]


TOY = SourceSpec(
    "toy",
    engine=f"{__name__}:ToyEngine",
    options=("batch_size",),
    takes_url=True,
    server=ServerMode.external,
    help="a JSON embedding service (the test's)",
)


@pytest.fixture
def toy_source() -> Iterator[SourceSpec]:
    register_source(TOY)
    try:
        yield TOY
    finally:
        unregister_source(TOY.name)


@pytest.fixture
def toy_server(local_engine) -> Iterator[str]:
    """The toy service on 127.0.0.1: texts embedded by the real local engine (the session's MiniLM)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                vectors = local_engine.embed(request["texts"], EmbedKind(request["kind"]))
            body = json.dumps({"vectors": vectors.tolist()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _eval(tmp_path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, dict]:
    out = tmp_path / "report.json"
    res = CliRunner().invoke(
        app, ["eval", "all-MiniLM-L6-v2", "-t", "beir/SciFact", *SLICE, "--no-progress", "-o", str(out), *args], env=env
    )
    report = json.loads(out.read_text()) if res.exit_code == 0 else {}
    return res.exit_code, " ".join(res.output.split()), report


def test_one_row_makes_a_source_everywhere(toy_source):
    assert "toy" in COMPUTE_SOURCES and "toy" in ALL_SOURCES
    assert source_spec("toy").url_option == "--toy-url" and source_spec("toy").url_env == "SIE_EVALS_TOY_URL"
    unregister_source("toy")
    assert "toy" not in ALL_SOURCES  # the views read the table on use
    register_source(TOY)


def test_the_toy_engine_embeds_like_the_local_engine(toy_source, toy_server, local_engine, minilm):
    texts = ["a protein folds", "cells divide and differentiate under many signals"]
    options = EngineOptions(server_urls={"toy": toy_server})
    with create_engine("toy", minilm, minilm.resolve_profile("default"), options) as toy:
        got = toy.embed(texts, EmbedKind.document)
        assert toy.info().extra["server"] == {"managed": False, "url": toy_server}
    np.testing.assert_array_equal(got, local_engine.embed(texts, EmbedKind.document))


@pytest.mark.slow  # a CLI eval of each source on a 20-query slice
def test_cli_toy_source_by_server_url_option_scores_like_local(toy_source, toy_server, tmp_path):
    code, output, report = _eval(tmp_path, "-s", "local,toy", "--server-url", f"toy={toy_server}")
    assert code == 0, output
    local, toy = report["sources"]["local"], report["sources"]["toy"]
    assert toy["metrics"] == local["metrics"]
    assert 0.0 < toy["metrics"]["ndcg_at_10"] <= 1.0
    assert toy["run_conditions"]["engine"] == "toy"


@pytest.mark.slow  # a CLI eval of each source on a 20-query slice
def test_cli_toy_source_url_from_its_env_variable(toy_source, toy_server, tmp_path, monkeypatch):
    monkeypatch.setenv("SIE_EVALS_TOY_URL", toy_server)
    code, output, report = _eval(tmp_path, "-s", "toy")
    assert code == 0, output
    assert report["sources"]["toy"]["run_conditions"]["engine"] == "toy"
    assert report["sources"]["toy"]["metrics"]["ndcg_at_10"] > 0.0


def test_cli_toy_source_without_a_url_is_exit_2_naming_the_settings(toy_source, tmp_path, monkeypatch):
    monkeypatch.delenv("SIE_EVALS_TOY_URL", raising=False)
    code, output, _ = _eval(tmp_path, "-s", "toy")
    assert code == 2, output
    assert "source toy needs a server" in output
    assert "--server-url toy=URL" in output and "$SIE_EVALS_TOY_URL" in output


@pytest.mark.parametrize(
    "pair, expected",
    [
        ("nope=http://127.0.0.1:1", "source 'nope' takes no server URL"),
        ("local=http://127.0.0.1:1", "source 'local' takes no server URL"),
        ("toy", "expected SOURCE=URL"),
    ],
)
def test_cli_bad_server_url_is_exit_2(toy_source, tmp_path, pair, expected):
    code, output, _ = _eval(tmp_path, "-s", "local", "--server-url", pair)
    assert code == 2, output
    assert expected in output and "Traceback" not in output


def test_sie_url_option_still_works_and_reaches_the_engine(tmp_path):
    """The built-in rows' options keep their names: --sie-url is derived from the sie row."""
    code, output, _ = _eval(tmp_path, "-s", "sie", "--sie-url", "ftp://127.0.0.1:1")
    assert code == 2, output
    assert "--sie-url" in output and "is not an http(s)://host[:port] URL" in output


def test_engine_options_take_the_rows_url_keywords(toy_source):
    opts = EngineOptions.of(threads=2, sie_url="http://127.0.0.1:1", toy_url="http://127.0.0.1:2", tei_url=None)
    assert opts.server_urls == {"sie": "http://127.0.0.1:1", "toy": "http://127.0.0.1:2"}
    assert opts.for_engine()["toy_url"] == "http://127.0.0.1:2" and opts.threads == 2
    with pytest.raises(TypeError, match="local_url"):
        EngineOptions.of(local_url="http://127.0.0.1:3")  # the local row takes no URL


def test_a_row_with_an_install_recipe_is_installable(toy_source):
    from sie_evals.lib.core.sources import InstallRecipe
    from sie_evals.lib.servers import install

    assert "toy" not in install.PACKAGES and set(install.PACKAGES) == {"sie", "infinity"}
    recipe = InstallRecipe(version="1.0", python="3.11", steps=(("toy-server==1.0",),), executable="toy-server")
    register_source(SourceSpec("toy-installable", engine=TOY.engine, takes_url=True, install=recipe))
    try:
        assert install.PACKAGES["toy-installable"].executable == "toy-server"
    finally:
        unregister_source("toy-installable")
    assert "toy-installable" not in install.PACKAGES


def test_cli_two_urls_for_one_source_is_exit_2(tmp_path):
    args = ["-s", "sie", "--sie-url", "http://127.0.0.1:1", "--server-url", "sie=http://127.0.0.1:2"]
    code, output, _ = _eval(tmp_path, *args)
    assert code == 2, output
    assert "a second, different URL for source 'sie'" in output
