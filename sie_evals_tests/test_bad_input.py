"""Bad input found by trying the CLI as a hostile user would (issue 12, point 8): each is exit 2 with
a message naming the file and line (or field), printed literally, and nothing written."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.core.errors import DatasetError
from sie_evals.lib.harness.report import render_table
from sie_evals.lib.quality.task_types import task_type_for
from sie_evals.lib.reporting.alerts import Alert, AlertDeliveryError, WebhookSink, deliver, run_url
from sie_evals.lib.tasks import resolve_task
from sie_evals_tests.conftest import DATA, MODEL_ID, REPO_ROOT, make_beir_folder
from sie_evals_tests.webhook import WebhookReceiver

runner = CliRunner()
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"
LATIN1 = "café".encode("latin-1")  # b"caf\xe9": one byte that is not UTF-8
JUNK = bytes(range(256)) * 4  # binary junk


def _flat(text: str) -> str:
    return " ".join(text.split())


def _eval(args: list[str], out: Path) -> tuple[int, str]:
    res = runner.invoke(app, ["eval", *args, "--no-progress", "-o", str(out)])
    return res.exit_code, _flat(res.output)


def _replace_line(path: Path, lineno: int, new: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = new
    path.write_bytes(b"\n".join(lines))


# ---------------------------------------------------------------- model configs that are not UTF-8


@pytest.mark.parametrize("damage", ["latin1", "junk"])
def test_model_config_not_utf8_is_exit_2_naming_file_and_line(configs_dir, monkeypatch, tmp_path, damage):
    cfg = configs_dir / CONFIG_NAME
    original = cfg.read_bytes()
    if damage == "latin1":  # a comment on line 3 with one Latin-1 byte
        lines = original.split(b"\n")
        cfg.write_bytes(b"\n".join([*lines[:2], b"# " + LATIN1, *lines[2:]]))
        where = f"{CONFIG_NAME}:3:6:"
    else:
        cfg.write_bytes(JUNK)
        where = f"{CONFIG_NAME}:2:118:"  # byte 0x80 (after the \\n at 0x0a) cannot start a UTF-8 sequence
    damaged = cfg.read_bytes()
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    out = tmp_path / "report.json"
    code, text = _eval([MODEL_ID, "-t", "beir/SciFact", "--limit-queries", "5"], out)
    assert code == 2, text
    assert where in text and "not UTF-8" in text
    assert not out.exists() and cfg.read_bytes() == damaged
    res = runner.invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 2 and where in _flat(res.output)


# ---------------------------------------------------------------- dataset files that are not UTF-8


@pytest.mark.parametrize("file", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_beir_file_not_utf8_is_exit_2_naming_file_and_line(beir_root, tmp_path, file):
    path = beir_root / "tinybeir" / file
    lines = path.read_bytes().split(b"\n")
    lineno = 3
    column = 2
    _replace_line(path, lineno, lines[lineno - 1][:1] + b"\xe9" + lines[lineno - 1][1:])
    out = tmp_path / "report.json"
    code, text = _eval([MODEL_ID, "-t", "beir/tinybeir", "--data-dir", str(beir_root)], out)
    assert code == 2, text
    assert f"{file}:{lineno}:{column}: not UTF-8 text (byte 0xe9)" in text
    assert not out.exists()


def _copy_head(src: Path, dst: Path, n_lines: int) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"\n".join(src.read_bytes().split(b"\n")[:n_lines]) + b"\n")
    return dst


LABELED = {  # task: (folder, files to copy, the file to damage)
    "mteb/Banking77Classification": ("banking77", ["train.csv", "test.csv", "label_names.json"], "test.csv"),
    "mteb/TwitterURLCorpus": ("twitterurlcorpus", ["mteb_test.tsv"], "mteb_test.tsv"),
    "mteb/STSBenchmark": ("stsbenchmark", ["sts-test.csv"], "sts-test.csv"),
}


@pytest.mark.parametrize("task", [*LABELED, "labels"])
def test_labeled_layouts_not_utf8_name_file_and_line(tmp_path, task):
    folder, files, victim = LABELED["mteb/Banking77Classification" if task == "labels" else task]
    victim = "label_names.json" if task == "labels" else victim
    spec = resolve_task("mteb/Banking77Classification" if task == "labels" else task)
    for name in files:
        src = DATA / folder / name
        dst = tmp_path / folder / name
        if name.endswith(".json"):
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
        else:
            _copy_head(src, dst, 30)
    task_type_for(spec).load(None, tmp_path)  # the copies load as they are
    path = tmp_path / folder / victim
    if victim.endswith(".json"):
        raw = path.read_bytes()
        path.write_bytes(raw.replace(b'"', b'"\xff', 1))
        lineno = raw[: raw.index(b'"')].count(b"\n") + 1
    else:
        lineno = 5
        _replace_line(path, lineno, LATIN1 + path.read_bytes().split(b"\n")[lineno - 1])
    with pytest.raises(DatasetError, match=rf"{victim}:{lineno}:\d+: not UTF-8 text"):
        task_type_for(spec).load(None, tmp_path)


# ---------------------------------------------------------------- null text


@pytest.mark.parametrize("file", ["queries.jsonl", "corpus.jsonl"])
def test_null_text_is_exit_2_naming_file_line_and_field(beir_root, tmp_path, file):
    path = beir_root / "tinybeir" / file
    lineno = 2
    row = json.loads(path.read_text().splitlines()[lineno - 1])
    row["text"] = None
    _replace_line(path, lineno, json.dumps(row).encode())
    out = tmp_path / "report.json"
    code, text = _eval([MODEL_ID, "-t", "beir/tinybeir", "--data-dir", str(beir_root)], out)
    assert code == 2, text
    assert f"{file}:{lineno}: field 'text' must be a string, got null" in text
    assert not out.exists()


# ---------------------------------------------------------------- messages printed literally


def test_error_at_line_100_prints_literally_through_the_real_cli(tmp_path):
    """rich used to render `corpus.jsonl:100:` as an emoji (and `[...]` as markup)."""
    root = tmp_path / "data"
    folder = make_beir_folder(root, extra_docs=150)
    corpus = folder / "corpus.jsonl"
    assert len(corpus.read_text().splitlines()) > 100
    _replace_line(corpus, 100, b'{"_id": "[bold]x[/bold]", "text": :100: }')
    env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": str(REPO_ROOT), "TERM": "xterm-256color"}
    exe = [sys.executable, "-c", "from sie_evals.cli import main; main()"]
    res = subprocess.run(
        [*exe, "eval", MODEL_ID, "-t", "beir/tinybeir", "--data-dir", str(root), "-o", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr
    assert f"error: {corpus}:100: not valid JSON" in res.stderr
    assert "\N{HUNDRED POINTS SYMBOL}" not in res.stderr
    assert not (tmp_path / "r.json").exists()


def test_report_table_prints_user_text_literally():
    report = {
        "model": "org/model:100:",
        "task": "beir/[bold]x[/bold]",
        "split": "test",
        "profile": "default",
        "task_type": "retrieval",
        "main_score": "ndcg_at_10",
        "sources": {"local": {"kind": "saved", "available": True, "metrics": {}, "info": {"note": "see :smile:"}}},
        "dataset": {"counts": {"corpus": 1}, "variant": "test", "content_hash": "0" * 64},
        "saved": ["targets to /x/corpus.jsonl:100: [red]"],
    }
    console = Console(record=True, width=200, emoji=True, markup=True)  # even a console that interprets
    render_table(report, console)
    text = console.export_text()
    for literal in ("org/model:100:", "beir/[bold]x[/bold]", "see :smile:", "/x/corpus.jsonl:100: [red]"):
        assert literal in text, text


# ---------------------------------------------------------------- webhook credentials


ALERT = Alert(kind="run", title="evals", severity="FAILURE", run_id="r1", run_url="http://127.0.0.1:3000/runs/r1")
SECRET = "s3cr3t-Pa55"


@pytest.fixture
def receiver():
    r = WebhookReceiver()
    yield r
    r.close()


def test_webhook_user_info_is_sent_as_basic_auth_and_never_printed(receiver):
    url = receiver.url.replace("http://", f"http://alice:{SECRET}@")
    sink = WebhookSink(url, attempts=1)
    sink.send(ALERT)
    assert receiver.headers[-1]["Authorization"] == "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    receiver.replies = [500]
    with pytest.raises(AlertDeliveryError) as err:
        deliver(ALERT, [sink])
    assert "HTTP Error 500" in str(err.value) and "127.0.0.1" in str(err.value)
    assert SECRET not in str(err.value) and SECRET not in repr(sink)


@pytest.mark.parametrize(
    "url",
    [
        f"http://alice:{SECRET}@127.0.0.1:1/alerts",  # nothing listens on port 1
        f"http://alice:{SECRET}@127.0.0.1:notaport/alerts",  # malformed: urllib raises InvalidURL
        f"http://{SECRET}@/alerts",  # no host at all
    ],
)
def test_webhook_delivery_errors_never_contain_the_password(url):
    with pytest.raises(AlertDeliveryError) as err:
        deliver(ALERT, [WebhookSink(url, attempts=1, timeout_s=2)])
    assert SECRET not in str(err.value), err.value


def test_run_links_drop_user_info(monkeypatch):
    monkeypatch.setenv("SIE_EVALS_DAGSTER_URL", f"https://admin:{SECRET}@dagster.example/")
    assert run_url("r1") == "https://***@dagster.example/runs/r1"


def test_server_urls_with_user_info_are_redacted_in_errors():
    from sie_evals.lib.core.errors import InputError
    from sie_evals.lib.engines.http import parse_base_url

    with pytest.raises(InputError) as err:
        parse_base_url(f"http://bob:{SECRET}@127.0.0.1:notaport", "--sie-url")
    assert SECRET not in str(err.value) and "***@127.0.0.1:notaport" in str(err.value)
