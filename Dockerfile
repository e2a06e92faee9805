# sie-evals as an installed package (non-editable wheel, with its model configs and instance template
# as package data): the Dagster user-code image of deploy/helm/values.yaml, and a CLI image.
#
#   docker build -t sie-evals:0.1.0 .                                   # CPU (torch's CPU wheel)
#   docker build -t sie-evals:0.1.0-cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#       CUDA variant: the same image with torch's CUDA wheel (it bundles the CUDA runtime as pip packages);
#       run it on a node with the NVIDIA driver and container toolkit (docker run --gpus all ...), and
#       pass --device cuda to server sources. The GPU pool/node selection is in deploy/helm/values.yaml.
#   docker run --rm -v $PWD/../shared/data:/mnt/datasets:ro sie-evals:0.1.0 \
#       sie-bench eval sentence-transformers/all-MiniLM-L6-v2 -t beir/SciFact --limit-queries 50
#
# Every path comes from the environment (see lib/core/paths.py); mount volumes at these paths to keep
# saved targets, results and caches. Not built in CI: the development machines have no docker engine;
# sie_evals_tests/test_deploy.py installs the same wheel into a fresh venv outside the repo instead.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM ${PYTHON_IMAGE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# torch first, from the chosen index: the wheel's `torch==2.13.0` is then already satisfied, so pip
# never swaps in another build.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY --from=wheel /wheels /wheels
# dagster-k8s: the K8sRunLauncher that deploy/k8s/dagster.yaml and the Helm chart configure.
RUN pip install --no-cache-dir /wheels/sie_evals-*.whl "dagster-k8s==0.29.27" && rm -rf /wheels
RUN useradd --create-home --uid 1000 sie \
 && mkdir -p /var/lib/sie-evals/dagster_home /var/cache/sie-evals /mnt/datasets \
 && chown -R sie /var/lib/sie-evals /var/cache/sie-evals
ENV SIE_EVALS_HOME=/var/lib/sie-evals \
    SIE_EVALS_RESULTS_DIR=/var/lib/sie-evals/results \
    SIE_EVALS_CACHE_DIR=/var/cache/sie-evals \
    SIE_EVALS_DATA_DIR=/mnt/datasets \
    DAGSTER_HOME=/var/lib/sie-evals/dagster_home \
    HF_HOME=/var/cache/sie-evals/huggingface \
    PYTHONUNBUFFERED=1
# SIE_EVALS_MODEL_CONFIGS_DIR unset: the configs shipped in the package (read-only use); set it to a
# mounted, writable copy to save targets and measurements.
USER sie
WORKDIR /var/lib/sie-evals
EXPOSE 3030
# The Helm chart runs `dagster api grpc` with its own arguments; this default serves the same code location.
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "sie_evals.definitions"]
