# syntax=docker/dockerfile:1
# sie-evals as an installed package (non-editable wheel, with its model configs and instance template
# as package data) in a venv at /opt/venv: the Dagster user-code image of deploy/helm/values.yaml and
# deploy/k8s, and a CLI image.
#
#   docker build -t sie-evals:0.1.0 .                                   # CPU (torch's CPU wheel)
#   docker build -t sie-evals:0.1.0-cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#       CUDA variant: the same image with torch's CUDA wheel (it bundles the CUDA runtime as pip packages);
#       run it on a node with the NVIDIA driver and container toolkit, and pass --device cuda to server sources.
#   bash scripts/build_image.sh                                         # here: buildah, no registry, no docker
#       (a Debian bookworm base made with debootstrap; torch and every package from this machine's pip
#       configuration: see the script and docs/deployment.md)
#   docker run --rm -v $PWD/../shared/data:/mnt/datasets:ro sie-evals:0.1.0 \
#       sie-bench eval sentence-transformers/all-MiniLM-L6-v2 -t beir/SciFact --limit-queries 50
#
# Every path comes from the environment (see lib/core/paths.py); mount volumes at these paths to keep
# saved targets, results and caches. sie_evals_tests/test_image.py builds this file and runs it.

# Any image with Debian's or python.org's python3.11 and its venv module (the slim image has both;
# build_image.sh passes a debootstrap'd bookworm with python3.11-venv).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
# The builder's pip configuration (index, find-links, constraints, CA), bind-mounted by the builder;
# empty: pip's defaults. An ARG, so it is set while building and never kept in the image.
ARG PIP_CONFIG_FILE=
WORKDIR /src
COPY . .
# The wheel, and the requirement list on its own: it changes only with pyproject.toml, so the layer
# that installs the dependencies below stays cached across source edits.
# EXTRAS: the optional dependency groups the image carries (s3/gcs: SIE_EVALS_ARTIFACTS_URL=s3://, gs://).
ARG EXTRAS=s3,gcs
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --no-deps -q -w /wheels . \
 && EXTRAS="$EXTRAS" python3 -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [r for e in filter(None, os.environ['EXTRAS'].split(',')) \
for r in p['optional-dependencies'][e]]))" > /requirements.txt

FROM ${PYTHON_IMAGE}
# Empty: the builder's default index (build_image.sh: this machine's, which holds the CPU wheel).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG PIP_CONFIG_FILE=
# A venv, first on PATH: Debian's python3.11 is externally managed (PEP 668), and the slim image's
# python is left as it is either way.
RUN python3 -m venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# torch first, from the chosen index: the package's `torch==2.13.0` is then already satisfied, so pip
# never swaps in another build. pip's cache is a build cache mount: never in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==${TORCH_VERSION}"
COPY --from=wheel /requirements.txt /tmp/requirements.txt
# dagster-k8s: the K8sRunLauncher that deploy/k8s/dagster.yaml and the Helm chart configure.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -q -r /tmp/requirements.txt "dagster-k8s==0.29.27" && rm /tmp/requirements.txt
COPY --from=wheel /wheels /wheels
RUN pip install -q --no-cache-dir --no-deps /wheels/sie_evals-*.whl && rm -rf /wheels \
 && pip check
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
