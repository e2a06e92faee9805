"""The engines resource (EngineFactory): server URLs are Dagster config, checked before any engine is built,
and a URL's credentials never reach an error message."""

import dagster as dg
import pytest

from sie_evals.defs.evals.resources import EngineFactory, EvalSettings
from sie_evals.lib.core.errors import ConfigError


def test_server_urls_and_openai_model_go_on_top_of_the_settings_options():
    settings = EvalSettings(threads=2, batch_size=8)
    factory = EngineFactory(server_urls={"sie": "http://127.0.0.1:8080"}, openai_model="text-embedding-3-small")
    options = factory.engine_options(settings.engine_options())
    assert options.server_urls == {"sie": "http://127.0.0.1:8080"}
    assert (options.threads, options.batch_size, options.openai_model) == (2, 8, "text-embedding-3-small")
    assert options.for_engine()["sie_url"] == "http://127.0.0.1:8080"
    # nothing configured: the settings' options unchanged (each engine then reads $SIE_EVALS_<SOURCE>_URL)
    assert EngineFactory().engine_options(settings.engine_options()) == settings.engine_options()


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ({"lokal": "http://127.0.0.1:1"}, "server_urls.lokal: 'lokal' is not a source that takes a server URL"),
        ({"local": "http://127.0.0.1:1"}, "server_urls.local: 'local' is not a source that takes a server URL"),
        ({"sie": "ftp://user:hunter2@example.com"}, "server_urls.sie: 'ftp://***@example.com' is not an http(s)"),
    ],
)
def test_a_bad_server_url_is_a_config_error_naming_the_field(urls, message):
    with pytest.raises(ConfigError) as err:
        EngineFactory(server_urls=urls).engine_options(EvalSettings().engine_options())
    assert message in str(err.value) and "hunter2" not in str(err.value)


def test_from_env_names_the_url_variables_and_dagster_reads_them_at_run_time(monkeypatch):
    """The deployed resource shows which sources have a server URL (the variable's name, never the URL and its
    credentials), and a run gets the URL itself."""
    url = "http://user:hunter2@127.0.0.1:8080"
    monkeypatch.setenv("SIE_EVALS_SIE_URL", url)
    monkeypatch.delenv("SIE_EVALS_TEI_URL", raising=False)
    factory = EngineFactory.from_env()
    assert factory.server_urls == {"sie": "SIE_EVALS_SIE_URL"}  # the config holds the variable's name
    assert isinstance(factory.server_urls["sie"], dg.EnvVar) and "hunter2" not in repr(factory)

    @dg.asset
    def urls(engines: EngineFactory) -> dict:
        return dict(engines.engine_options(EvalSettings().engine_options()).server_urls)

    assert dg.materialize([urls], resources={"engines": factory}).output_for_node("urls") == {"sie": url}
