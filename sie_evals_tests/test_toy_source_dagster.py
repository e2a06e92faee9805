"""The Dagster half of the toy-source acceptance (issue 23): a new source is one engine class plus one row of the
source table (both in toy_source.py), and the eval assets run it with its server URL given as config of the
engines resource (EngineFactory), not as an environment variable. The server is real: the OpenAI-compatible
test server (all-MiniLM-L6-v2 through sentence-transformers) on 127.0.0.1."""

from typing import Any

import dagster as dg
import pytest
from ruamel.yaml import YAML

from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
from sie_evals.defs.evals.partitions import sync_partitions
from sie_evals.defs.evals.resources import EngineFactory, EvalSettings, JsonIOManager
from sie_evals.lib.core.sources import register_source, unregister_source
from sie_evals_tests import openai_server
from sie_evals_tests.conftest import REPO_ROOT
from sie_evals_tests.toy_source import TOY

pytestmark = pytest.mark.slow  # a server start and a real embedding run (~30 s)

CELL = "all-MiniLM-L6-v2:beir/SciFact:toy"
ASSETS = [task_dataset, embeddings, quality_scores]


@pytest.fixture
def toy_source(tmp_path, monkeypatch):
    """The table row, and a config dir whose one model config declares the toy cell."""
    register_source(TOY)
    monkeypatch.delenv(TOY.url_env, raising=False)  # the URL can only come from the resource config
    folder = tmp_path / "model_configs"
    folder.mkdir()
    yaml = YAML()
    tree = yaml.load((REPO_ROOT / "model_configs" / "sentence-transformers__all-MiniLM-L6-v2.yaml").read_text())
    tree["tasks"], tree["sources"], tree["targets"], tree["measurements"] = ["beir/SciFact"], ["toy"], {}, {}
    tree["profiles"] = {"default": tree["profiles"]["default"]}
    with open(folder / "minilm.yaml", "w") as fh:
        yaml.dump(tree, fh)
    yield folder
    unregister_source(TOY.name)


def _materialize(instance, resources, selection):
    return dg.materialize(
        ASSETS, selection=selection, partition_key=CELL, instance=instance, resources=resources, raise_on_error=False
    )


def test_a_new_source_runs_through_dagster_with_its_url_as_resource_config(toy_source, tmp_path):
    settings = EvalSettings(
        model_configs_dir=str(toy_source),
        results_dir=str(tmp_path / "results"),
        cache_dir=str(tmp_path / "cache"),
        limit_queries=20,
        corpus_size=300,
    )
    resources: dict[str, Any] = {"settings": settings, "json_io": JsonIOManager(base_dir=str(tmp_path / "io"))}
    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance, toy_source)  # the declared cells, as the sync sensor makes them
    assert CELL in instance.get_dynamic_partitions("eval_cells")
    assert _materialize(instance, {**resources, "engines": EngineFactory()}, [task_dataset]).success

    # no URL in the resource and none in the environment: the toy engine has no server to talk to
    res = _materialize(instance, {**resources, "engines": EngineFactory()}, [embeddings])
    failure = res.get_step_failure_events()[0].step_failure_data.error
    assert not res.success and "source toy needs a server" in str(failure.message)

    with openai_server.running(tmp_path / "server.log") as port:
        url = f"http://127.0.0.1:{port}"
        engines = EngineFactory(server_urls={"toy": url})
        res = _materialize(instance, {**resources, "engines": engines}, [embeddings, quality_scores])
    assert res.success
    emb = res.output_for_node("embeddings")
    assert emb["engine"]["engine"] == "toy" and emb["engine"]["extra"]["url"] == url
    assert emb["cache"]["misses"] > 0  # embedded by the server, not read from a cache
    # the server's MiniLM scores SciFact as MiniLM does (0.645 ndcg@10 on the full split), not at random
    assert res.output_for_node("quality_scores")["metrics"]["ndcg_at_10"] > 0.5
