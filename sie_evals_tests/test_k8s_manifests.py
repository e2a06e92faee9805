"""Every file under deploy/ checked as what it is (issue 24, item 5): Kubernetes objects against Kubernetes'
own JSON schemas (kubernetes-validate, strict: an unknown field fails), the kustomization's generated
ConfigMap the same way, Dagster instance configs against dagster's config schema, and the Helm values by
the chart fields they set. No cluster and no helm binary are needed (docs/deployment.md says what is
left untested)."""

import importlib.util
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from sie_evals.defs.executors import (
    BROKER_VAR,
    CPU_QUEUE,
    EXECUTOR_VAR,
    GPU_QUEUE,
    WORKER_REQUIRES_VAR,
    celery_config,
    executor_name,
)
from sie_evals.lib.config.settings import ENV_PREFIX, EvalDefaults
from sie_evals.lib.core import paths
from sie_evals_tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.37"  # the newest schemas kubernetes-validate 1.37.0 ships
INSTANCE = K8S / "dagster.yaml"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
# The top-level keys of a Dagster instance config (dagster.yaml) that these files use.
INSTANCE_KEYS = {"storage", "run_launcher", "run_coordinator", "concurrency", "telemetry", "run_retries"}
# What Dagster's chart (1.13.27) reads from the values to run this deployment, and the value each must
# have: the user-code image, the run launcher, the Secret with the Postgres password.
CHART_FIELDS = {
    "dagster-user-deployments.enabled": True,
    "dagster-user-deployments.deployments.0.image.repository": "REGISTRY/sie-evals",
    "runLauncher.type": "K8sRunLauncher",
    "global.postgresqlSecretName": "dagster-postgresql-secret",
}
CHART_SECRET_KEY = "postgresql-password"  # the key the chart's pods read the password from


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kind_of(path: Path) -> str:
    """What a file under deploy/ is: every one must be recognised, so a new file cannot go unchecked."""
    found = docs(path)
    if path == HELM_VALUES:
        return "helm-values"
    if len(found) == 1 and found[0].get("kind") == "Kustomization":
        return "kustomization"
    if found and all("apiVersion" in d and "kind" in d for d in found):
        return "kubernetes"
    if len(found) == 1 and set(found[0]) <= INSTANCE_KEYS and "storage" in found[0]:
        return "dagster-instance"
    return "unrecognised"


DEPLOY_FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file())


def kustomization() -> dict[str, Any]:
    (k,) = docs(K8S / "kustomization.yaml")
    return k


def generated_configmaps() -> list[dict[str, Any]]:
    """The ConfigMaps the kustomization generates (`kubectl apply -k` does the same: one data key per file)."""
    k = kustomization()
    assert k["generatorOptions"]["disableNameSuffixHash"] is True  # run pods find it by its exact name
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": g["name"], "namespace": k["namespace"]},
            "data": {f: (K8S / f).read_text() for f in g["files"]},
        }
        for g in k.get("configMapGenerator", [])
    ]


def objects() -> list[dict[str, Any]]:
    """Every Kubernetes object deploy/k8s makes: the listed resources and the generated ConfigMaps."""
    listed = [d for name in kustomization()["resources"] for d in docs(K8S / name)]
    return listed + generated_configmaps()


def named(kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in objects() if o["kind"] == kind}


def pod_specs() -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objects() if o["kind"] == "Deployment"}


def test_the_deploy_folder_has_what_a_deployment_needs():
    kinds = {f.relative_to(DEPLOY).as_posix(): kind_of(f) for f in DEPLOY_FILES}
    assert kinds["k8s/dagster.yaml"] == kinds["postgres/dagster.yaml"] == "dagster-instance"
    assert kinds["helm/values.yaml"] == "helm-values" and kinds["k8s/kustomization.yaml"] == "kustomization"
    made = {(o["kind"], o["metadata"]["name"]) for o in objects()}
    for need in [
        ("Namespace", "sie-evals"),
        ("ConfigMap", "dagster-instance"),
        ("PersistentVolumeClaim", "sie-evals-state"),
        ("Deployment", "sie-evals-user-code"),
        ("Service", "sie-evals-user-code"),
        ("Deployment", "sie-evals-redis"),
        ("Service", "sie-evals-redis"),
        ("Deployment", "sie-evals-worker-gpu"),
        ("Deployment", "sie-evals-worker-cpu"),
    ]:
        assert need in made, need
    # every Kubernetes manifest in deploy/k8s is applied by the kustomization (none lies there unused)
    listed = set(kustomization()["resources"])
    on_disk = {f.name for f in K8S.glob("*.yaml") if kind_of(f) == "kubernetes"}
    assert on_disk == listed


def validate(path: Path, obj: dict[str, Any]) -> None:
    """One object against Kubernetes' schema; a failure names the file, the object and the field."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
        where = ".".join(str(p) for p in getattr(e, "path", []))
        pytest.fail(f"{path.relative_to(REPO_ROOT)}: {obj['kind']} {obj['metadata'].get('name')}: {where}: {e.message}")


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_file_under_deploy_validates_as_what_it_is(path):
    kind = kind_of(path)
    assert kind != "unrecognised", f"{path}: not a Kubernetes manifest, kustomization, instance config or Helm values"
    if kind == "kubernetes":
        for doc in docs(path):
            validate(path, doc)
    elif kind == "kustomization":
        for name in kustomization()["resources"]:
            assert (K8S / name).is_file(), name
        for cm in generated_configmaps():
            validate(path, cm)
    elif kind == "dagster-instance":
        # dagster has no public call that validates an instance file without connecting to its storage;
        # this is what DagsterInstance.from_config runs first (dagster's own schema for dagster.yaml).
        from dagster._core.instance.config import dagster_instance_config

        dagster_instance_config(str(path.parent), path.name)
    else:
        test_helm_values_set_the_chart_fields_this_deployment_needs()


def test_the_strict_schemas_reject_a_misspelt_field_and_a_wrong_type():
    (deployment, _) = docs(K8S / "user-code.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolcy"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    (pvc, *_) = docs(K8S / "storage.yaml")
    pvc["spec"]["accessModes"] = "ReadWriteMany"  # a string, not a list
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pvc, K8S_VERSION, strict=True)


def test_secrets_are_referenced_never_stored():
    found = [f for f in DEPLOY_FILES if kind_of(f) == "kubernetes" for d in docs(f) if d["kind"] == "Secret"]
    assert not found, f"Secret objects (values) in the repository: {found}"
    secret = yaml.safe_load(INSTANCE.read_text())["run_launcher"]["config"]["postgres_password_secret"]
    for name, spec in pod_specs().items():
        for container in spec["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert "PGPASSWORD" not in {k for c in container.get("envFrom", []) for k in c}, name
            if name == "sie-evals-redis":
                continue
            ref = env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]  # from a Secret, never a `value`
            assert ref == {"name": secret, "key": CHART_SECRET_KEY}, name
    env_cm = next(o for o in objects() if o["metadata"]["name"] == "sie-evals-env")
    assert not [k for k in env_cm["data"] if "PASSWORD" in k or "TOKEN" in k or "WEBHOOK" in k]


def test_every_name_a_pod_or_the_instance_refers_to_exists():
    launcher = yaml.safe_load(INSTANCE.read_text())["run_launcher"]["config"]
    assert launcher["instance_config_map"] in named("ConfigMap")
    assert set(launcher["env_config_maps"]) <= named("ConfigMap")
    assert launcher["service_account_name"] in named("ServiceAccount")
    claims = named("PersistentVolumeClaim")
    for name, spec in pod_specs().items():
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, (name, volume)
            if "configMap" in volume:
                assert volume["configMap"]["name"] in named("ConfigMap"), (name, volume)
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in named("ConfigMap"), name
    # the Helm values mount the same claims
    (deployment,) = yaml.safe_load(HELM_VALUES.read_text())["dagster-user-deployments"]["deployments"]
    for volume in deployment["volumes"]:
        assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
    # each Service selects the pods of a Deployment and targets a named port they expose
    for svc in (o for o in objects() if o["kind"] == "Service"):
        target = next(
            o
            for o in objects()
            if o["kind"] == "Deployment" and o["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
        )
        exposed = {p["name"] for c in target["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= exposed, svc["metadata"]["name"]


def test_user_code_serves_the_code_location_the_helm_values_name():
    (container,) = pod_specs()["sie-evals-user-code"]["containers"]
    values = yaml.safe_load(HELM_VALUES.read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert container["args"][:3] == ["dagster", "api", "grpc"]
    assert container["args"][-2:] == deployment["dagsterApiGrpcArgs"]  # -m sie_evals.definitions
    assert str(deployment["port"]) in container["args"]
    assert container["readinessProbe"]["exec"]["command"][:3] == ["dagster", "api", "grpc-health-check"]


ENV_CONFIGMAP = "sie-evals-env"  # what every sie-evals pod and run pod takes its settings from (envFrom)
CELERY_APP = "sie_evals.defs.celery_app"  # the worker app (not imported here: it needs the broker variable)


def env_configmap() -> dict[str, str]:
    return next(o for o in objects() if o["kind"] == "ConfigMap" and o["metadata"]["name"] == ENV_CONFIGMAP)["data"]


def container_env(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_celery_workers_one_per_queue_with_the_gpus_the_run_pods_do_not_take(monkeypatch):
    assert importlib.util.find_spec(CELERY_APP) is not None
    run_pods = yaml.safe_load(INSTANCE.read_text())["run_launcher"]["config"]["run_k8s_config"]
    specs = pod_specs()
    for queue in (GPU_QUEUE, CPU_QUEUE):
        (container,) = specs[f"sie-evals-worker-{queue}"]["containers"]
        args = container["args"]
        assert args[:4] == ["celery", "-A", CELERY_APP, "worker"]  # the app of defs/executors.py
        assert args[args.index("-Q") + 1] == queue
    gpu, cpu = specs["sie-evals-worker-gpu"], specs["sie-evals-worker-cpu"]
    assert container_env(gpu["containers"][0])[WORKER_REQUIRES_VAR] == "gpu"  # no GPU: its steps fail, naming it
    assert WORKER_REQUIRES_VAR not in container_env(cpu["containers"][0])
    # the gpu worker's steps embed on the GPU: the settings read its device variable (profiles default to cpu)
    device_var = ENV_PREFIX + "DEVICE"
    monkeypatch.setenv(device_var, container_env(gpu["containers"][0]).get(device_var) or "")
    assert EvalDefaults().device == "cuda"
    assert device_var not in container_env(cpu["containers"][0])
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    # the GPUs are the gpu workers': a run pod that also asked for one would hold a GPU idle per run
    assert "nvidia.com/gpu" not in str(run_pods)
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"].get("limits", {})
    assert "nodeSelector" not in cpu


def test_the_env_sets_the_executor_and_broker_under_the_names_the_code_reads():
    """The names are the code's own constants (defs/executors.py, lib/core/paths.py): a rename there that the
    manifests do not follow fails here, as the old DAGSTER_CELERY_BROKER_URL, read by nothing, would have."""
    env = env_configmap()
    assert executor_name(env) == "celery", env.get(EXECUTOR_VAR)  # unset would be in_process
    celery_config(env)  # what a run's executor checks first: the broker is set
    broker = urlsplit(env[BROKER_VAR])
    redis = next(o for o in objects() if o["kind"] == "Service" and o["metadata"]["name"] == broker.hostname)
    assert broker.scheme == "redis" and broker.port in {p["port"] for p in redis["spec"]["ports"]}
    for name in (paths.HOME_ENV, paths.MODEL_CONFIGS_DIR_ENV, paths.RESULTS_DIR_ENV, paths.CACHE_DIR_ENV):
        assert env[name].startswith("/"), name
    assert env[paths.DATA_DIR_ENV].startswith("/")
    # Every pod that loads the code location or runs a step reads that ConfigMap and does not override it:
    # the user-code server, both workers, the run pods of the instance's launcher and of the chart's.
    for name in ("sie-evals-user-code", "sie-evals-worker-gpu", "sie-evals-worker-cpu"):
        (container,) = pod_specs()[name]["containers"]
        assert {"configMapRef": {"name": ENV_CONFIGMAP}} in container["envFrom"], name
        assert not {EXECUTOR_VAR, BROKER_VAR} & set(container_env(container)), name
    assert ENV_CONFIGMAP in yaml.safe_load(INSTANCE.read_text())["run_launcher"]["config"]["env_config_maps"]
    values = yaml.safe_load(HELM_VALUES.read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    for where in (deployment, launcher):
        assert {"name": ENV_CONFIGMAP} in where["envConfigMaps"]
        assert not {EXECUTOR_VAR, BROKER_VAR} & {e["name"] for e in where.get("env", [])}


def test_every_sie_evals_variable_the_manifests_set_is_read_by_the_code():
    """A variable set in deploy/ (the ConfigMap, a container's env, the chart's env) but named nowhere in
    the package is a setting that silently does nothing."""
    (deployment,) = yaml.safe_load(HELM_VALUES.read_text())["dagster-user-deployments"]["deployments"]
    set_here = set(env_configmap()) | {e["name"] for e in deployment["env"]}
    set_here |= {name for spec in pod_specs().values() for c in spec["containers"] for name in container_env(c)}
    set_here = {v for v in set_here if v.startswith("SIE_EVALS_")}
    assert {EXECUTOR_VAR, BROKER_VAR, WORKER_REQUIRES_VAR, paths.RESULTS_DIR_ENV} <= set_here
    source = "\n".join(f.read_text() for f in (REPO_ROOT / "sie_evals").rglob("*.py"))
    settings = {ENV_PREFIX + field.upper() for field in EvalDefaults.model_fields}  # SIE_EVALS_<FIELD>
    unread = sorted(v for v in set_here if f'"{v}"' not in source and v not in settings)
    assert not unread, f"set under deploy/ but read by nothing in sie_evals/: {unread}"


def chart_field(values: dict[str, Any], dotted: str) -> Any:
    """One field as the chart reads it (`a.b.0.c`: list items by index), KeyError/IndexError when unset."""
    node: Any = values
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def test_helm_values_set_the_chart_fields_this_deployment_needs():
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert {f: chart_field(values, f) for f in CHART_FIELDS} == CHART_FIELDS
    # the chart names the same Secret as the standalone instance and the pods of deploy/k8s
    instance = yaml.safe_load(INSTANCE.read_text())["run_launcher"]["config"]
    assert instance["postgres_password_secret"] == CHART_FIELDS["global.postgresqlSecretName"]
    # one image, one tag: the chart's user code and the kustomization's pods run the same build
    (image,) = kustomization()["images"]
    tag = chart_field(values, "dagster-user-deployments.deployments.0.image.tag")
    repository = CHART_FIELDS["dagster-user-deployments.deployments.0.image.repository"]
    assert (image["name"], image["newTag"]) == (repository, tag)
    for spec in pod_specs().values():
        for container in spec["containers"]:
            if container["image"].startswith(image["name"] + ":"):
                assert container["image"] == f"{image['name']}:{tag}"


def test_a_missing_chart_field_is_caught():
    values = yaml.safe_load(HELM_VALUES.read_text())
    del values["global"]["postgresqlSecretName"]
    with pytest.raises(KeyError):
        chart_field(values, "global.postgresqlSecretName")
