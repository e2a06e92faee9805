"""Finesse bad input (issue 22 items 2 and 13: N93, and `finesse checksum` positions): exit 2 naming
file:line:column like sie-bench does, printed literally, no traceback, nothing written."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sie_evals.finesse.cli import app as finesse_app
from sie_evals_tests.conftest import SCIFACT

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _run(*args: str) -> tuple[int, str]:
    res = runner.invoke(finesse_app, list(args))
    return res.exit_code, _flat(res.output)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "b2.yaml"
    assert _run("init", "--output", str(path))[0] == 0
    return path


def _generate(config: Path, out: Path) -> tuple[int, str]:
    return _run("generate", "--config", str(config), "--output", str(out), "--samples", "1", "--threads", "1",
                "--dataset-path", str(SCIFACT / "corpus.jsonl"), "--no-progress")  # fmt: skip


def test_n93_config_with_a_latin1_byte_is_exit_2_naming_file_line_column(config, tmp_path):
    lines = len(config.read_bytes().splitlines())
    with open(config, "ab") as fh:
        fh.write(b"# caf\xe9\n")  # the reproduction's comment: one Latin-1 byte
    code, out = _generate(config, tmp_path / "o2")
    assert code == 2, out
    assert f"{config}:{lines + 1}:6: not UTF-8 text (byte 0xe9)" in out
    assert "Traceback" not in out and "UnicodeDecodeError" not in out
    assert not (tmp_path / "o2").exists()


def test_config_yaml_syntax_error_names_line_and_column(config, tmp_path):
    text = config.read_text().replace("samples_per_length: 10", "samples_per_length: [10")
    config.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), start=1) if "samples_per_length: [10" in t)
    code, out = _generate(config, tmp_path / "o")
    assert code == 2, out
    assert f"{config}:" in out and "not valid YAML" in out
    where = out.split(f"{config}:", 1)[1].split(":")
    assert int(where[0]) >= line and int(where[1]) >= 1  # the parser stops at or after the open '['


@pytest.fixture
def results_file(tmp_path: Path) -> Path:
    # a results file's opening, as `finesse score` writes it (indent 2)
    path = tmp_path / "benchmark_results.json"
    path.write_text('{\n  "config": {},\n  "metric": "rss",\n  "average_rss": 12.5,\n  "content_hash": "x"\n}\n')
    return path


def test_checksum_invalid_json_reports_line_and_column(results_file):
    results_file.write_text(results_file.read_text().replace('"average_rss": 12.5', '"average_rss": 12.5,,'))
    code, out = _run("checksum", "--json-path", str(results_file))
    assert code == 2, out
    assert f"{results_file}:4:23: not valid JSON (Expecting property name enclosed in double quotes)" in out


def test_checksum_non_utf8_reports_line_and_column(results_file):
    results_file.write_bytes(results_file.read_bytes().replace(b'"metric": "rss"', b'"metric": "r\xe9s"'))
    code, out = _run("checksum", "--json-path", str(results_file))
    assert code == 2, out
    assert f"{results_file}:3:15: not UTF-8 text (byte 0xe9)" in out and "Traceback" not in out


def test_checksum_markup_in_a_path_prints_literally(tmp_path):
    path = tmp_path / "[bold]r:100:.json"
    path.write_text("{\n  oops\n}\n")
    code, out = _run("checksum", "--json-path", str(path))
    assert code == 2, out
    assert f"{path}:2:3: not valid JSON" in out
