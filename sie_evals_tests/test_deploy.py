"""Deployable (issue 17, point 4): the Kubernetes instance config validates against dagster-k8s, the
Helm values agree with it, and the built wheel works installed outside the repo (no source tree)."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from sie_evals.lib.core import paths
from sie_evals_tests.conftest import DATA, MODEL_ID, REPO_ROOT

K8S_INSTANCE = REPO_ROOT / "deploy" / "k8s" / "dagster.yaml"
HELM_VALUES = REPO_ROOT / "deploy" / "helm" / "values.yaml"


def test_k8s_instance_config_validates_with_dagster_k8s():
    # dagster-k8s is a test dependency: an ImportError here is a failure, never a skip
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._serdes.config_class import class_from_code_pointer

    config, _ = dagster_instance_config(str(K8S_INSTANCE.parent), K8S_INSTANCE.name)  # the whole file's schema
    launcher = config["run_launcher"]
    cls = class_from_code_pointer(launcher["module"], launcher["class"])
    assert cls.__name__ == "K8sRunLauncher"
    result = validate_config(cls.config_type(), launcher["config"])  # the launcher's own schema
    assert result.success, [e.message for e in result.errors]
    # Celery runs (deploy/k8s/env.yaml): the run pod only orchestrates, the gpu queue's workers hold the
    # GPUs, and the gpu pool limits each shard step, not whole runs
    resources = launcher["config"]["run_k8s_config"]["container_config"]["resources"]
    assert "nvidia.com/gpu" not in {**resources.get("limits", {}), **resources.get("requests", {})}
    assert config["concurrency"]["pools"]["granularity"] == "op"


def test_k8s_instance_config_rejects_a_misspelt_key(tmp_path):
    from dagster._config import validate_config
    from dagster._serdes.config_class import class_from_code_pointer

    launcher = yaml.safe_load(K8S_INSTANCE.read_text())["run_launcher"]
    launcher["config"]["run_k8s_confg"] = launcher["config"].pop("run_k8s_config")
    cls = class_from_code_pointer(launcher["module"], launcher["class"])
    assert not validate_config(cls.config_type(), launcher["config"]).success  # the check above can fail


def test_helm_values_run_this_code_location_on_the_gpu_pool():
    values = yaml.safe_load(HELM_VALUES.read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("-m") + 1] == "sie_evals.definitions"
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    run_k8s = launcher["config"]["k8sRunLauncher"]["runK8sConfig"]
    instance = yaml.safe_load(K8S_INSTANCE.read_text())["run_launcher"]["config"]["run_k8s_config"]
    # the same run pods as the standalone instance file (CPU only: the steps go to the Celery workers)
    assert run_k8s["containerConfig"]["resources"] == instance["container_config"]["resources"]
    assert "podSpecConfig" not in run_k8s and "pod_spec_config" not in instance
    env = {e["name"]: e["value"] for e in deployment["env"]}
    for name in ("SIE_EVALS_HOME", "SIE_EVALS_MODEL_CONFIGS_DIR", "SIE_EVALS_DATA_DIR", "SIE_EVALS_RESULTS_DIR"):
        assert env[name].startswith("/"), name  # every path from the environment, never the source tree
    assert values["concurrency"]["pools"]["defaultLimit"] >= 1
    assert values["concurrency"]["pools"]["granularity"] == "op"


def test_paths_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SIE_EVALS_RESULTS_DIR")
    monkeypatch.setenv("SIE_EVALS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    assert paths.results_dir() == tmp_path / "home" / "results"
    assert paths.dagster_home() == tmp_path / "dh"
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(tmp_path / "configs"))
    assert paths.model_configs_dir() == tmp_path / "configs"
    # the package's own copies of the model configs and instance template are the checkout's files
    assert (paths.shipped_model_configs() / "model_config.schema.json").read_bytes() == (
        REPO_ROOT / "model_configs" / "model_config.schema.json"
    ).read_bytes()
    assert paths.instance_template().read_bytes() == (REPO_ROOT / "dagster.yaml").read_bytes()


@pytest.mark.slow
def test_wheel_installed_outside_the_repo_validates_and_evaluates(tmp_path, session_cache):
    """Build the wheel, install it (no deps) into a fresh venv outside the repo whose dependencies come
    from this interpreter's site-packages (a .pth line: torch is not installed twice), then run
    `dagster definitions validate` and a slice eval from there, with no checkout in sight."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), "."],
        cwd=REPO_ROOT,
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("sie_evals-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sie_evals/model_configs/model_config.schema.json" in names
    assert "sie_evals/data/instance/dagster.yaml" in names and "sie_evals/data/instance/workspace.yaml" in names
    assert not [n for n in names if n.startswith("sie_evals_tests/")]  # test helpers are not shipped
    # nothing of the checkout may leak in: no PYTHONPATH, no SIE_EVALS_*/DAGSTER_* settings
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SIE_EVALS_", "PYTHON", "DAGSTER_"))}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=clean, cwd=tmp_path)
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    pip = [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(pip, check=True, timeout=300, env=clean, cwd=tmp_path)
    # then the dependencies, from the running environment, after the venv's own packages (sie_evals from
    # the wheel; the running environment's editable sie_evals is never imported: its .pth is not processed)
    Path(purelib, "zz_sie_evals_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "work"  # the cwd: no checkout, no model_configs/ here
    work.mkdir()
    env = clean | {
        "HF_HUB_OFFLINE": "1",
        "SIE_EVALS_HOME": str(tmp_path / "home"),
        "SIE_EVALS_DATA_DIR": str(DATA),
        "SIE_EVALS_CACHE_DIR": str(session_cache),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    (tmp_path / "dagster_home").mkdir()

    def run(*argv: str | Path) -> subprocess.CompletedProcess:
        res = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{argv}: {res.stdout}\n{res.stderr}"
        return res

    where = json.loads(
        run(
            py,
            "-c",
            "import json, sie_evals; from sie_evals.lib.core import paths; "
            "print(json.dumps({'pkg': sie_evals.__file__, 'configs': str(paths.model_configs_dir()), "
            "'results': str(paths.results_dir()), 'checkout': str(paths.source_checkout())}))",
        ).stdout
    )
    assert where["pkg"].startswith(purelib) and where["configs"].startswith(purelib), where
    assert where["checkout"] == "None" and where["results"] == str(tmp_path / "home" / "results")

    run(py, "-m", "dagster", "definitions", "validate", "-m", "sie_evals.definitions")
    assert MODEL_ID in run(venv / "bin" / "sie-bench", "models").stdout
    out = work / "report.json"
    args = ["-t", "beir/SciFact", "--limit-queries", "5", "--corpus-size", "50", "--no-progress", "--no-record"]
    res = run(venv / "bin" / "sie-bench", "eval", MODEL_ID, *args, "-o", out)
    report = json.loads(out.read_text())
    assert report["source_order"] == ["local"] and 0 < report["sources"]["local"]["metrics"]["ndcg_at_10"] <= 1
    assert "ndcg_at_10" in res.stdout
