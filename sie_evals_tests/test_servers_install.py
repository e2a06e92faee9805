"""Provisioning of the server venvs: where they go, idempotence, and the no-Python-3.12 error.
(The real installs run in CI via scripts/provision_servers.sh; these tests do not install anything.)"""

import json
import os
import sys

import pytest

from sie_evals.lib.core.errors import EngineError, InputError
from sie_evals.lib.servers import install


def test_default_location_outside_repo(monkeypatch):
    monkeypatch.delenv(install.SERVERS_DIR_ENV, raising=False)
    home = install.home("sie")
    assert home == install.Path.home() / ".cache" / "sie-evals" / "servers" / "sie-0.10.1"
    monkeypatch.setenv(install.SERVERS_DIR_ENV, "/tmp/elsewhere")
    assert install.home("infinity") == install.Path("/tmp/elsewhere/infinity-0.0.78")


def test_unknown_server():
    with pytest.raises(InputError, match="installable servers: sie, infinity"):
        install.home("tei")


def test_no_python_found_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no pyenv, no python3.12 on PATH
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(EngineError, match=r"no Python 3\.12 found .*pyenv install 3\.12"):
        install.find_python("3.12")


def test_finds_current_python():
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    exe = install.find_python(version)
    assert os.path.exists(exe)


def test_install_is_idempotent_with_stamp(monkeypatch, tmp_path):
    """A matching stamp means: nothing to do (no pip); a stamp for another spec means: reinstall."""
    monkeypatch.setenv(install.SERVERS_DIR_ENV, str(tmp_path))
    home = install.home("infinity")
    exe = home / "venv" / "bin" / "infinity_emb"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    assert not install.installed("infinity")
    with pytest.raises(EngineError, match="sie-bench servers install infinity"):
        install.executable("infinity")
    (home / install.STAMP).write_text(json.dumps({"spec": install._spec(install.PACKAGES["infinity"])}))
    assert install.installed("infinity")
    called = []
    monkeypatch.setattr(install, "_run", lambda *a, **k: called.append(a))
    lines = []
    assert install.install("infinity", echo=lines.append) == exe
    assert called == [] and "already provisioned" in lines[0]
    (home / install.STAMP).write_text(json.dumps({"spec": {"version": "older"}}))
    assert not install.installed("infinity")
