# The lulc project images, two targets of one build:
#
#   runtime (default, full):  every KFP component, the CLI and the predictor (extras all)
#       docker build -t REGISTRY/lulc:$(git rev-parse HEAD) .
#   predictor:                only what serving needs (extra serve) — the InferenceService's image, quicker to pull
#       docker build --target predictor -t REGISTRY/lulc-predictor:$(git rev-parse HEAD) .
#   CUDA (GPU nodes):  --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 ... -cuda
#   No registry:       --build-arg PYTHON_IMAGE=<a local Python 3.11 base> (scripts/debootstrap_base.sh makes one)
#
# The install steps are the ones `make test` runs (tests/test_images.py compares them), so a green CI cannot hide a
# dependency the image lacks. torch's build comes from TORCH_INDEX (PyTorch's CPU wheel index by default), for the
# torch step only: the other packages never see that index. No HEALTHCHECK: Kubernetes probes the predictor.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml requirements.lock README.md LICENSE ./
COPY lulc_core/ lulc_core/
COPY lulc/ lulc/
COPY components/ components/
COPY pipelines/ pipelines/
COPY serving/ serving/

# Same steps, same order as the Makefile's venv rule (without the dev extra and without -e). Separate RUN steps on
# purpose (DL3059): the torch layer is large and changes rarely, so it stays cached.
# hadolint ignore=DL3013
RUN pip install -q --upgrade pip
# DL3013: hadolint reads the values of --retries/--timeout as unpinned packages; torch is pinned.
# hadolint ignore=DL3059,DL3013
RUN pip install -q --retries 1 --timeout 15 --index-url ${TORCH_INDEX} torch==2.13.0
# The predictor's venv: core + serve, kept aside (same path /opt/venv in the predictor image, so its scripts run).
# hadolint ignore=DL3059
RUN pip install -q -c requirements.lock '.[serve]' \
    && python -c "import lulc_core, serving.__main__, serving.server" \
    && cp -a /opt/venv /opt/venv-serve
# hadolint ignore=DL3059
RUN pip install -q -c requirements.lock '.[all]' \
    && python -c "import lulc_core, lulc.cli, components, pipelines, serving"

# ---------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime-base

ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="lulc" \
      org.opencontainers.image.description="Train, register and serve land-use/land-cover segmentation models." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${GIT_SHA}"

# A fixed, non-zero UID/GID so that Kubernetes' runAsNonRoot / runAsUser checks can verify it. The KFP v2 launcher
# stages artifacts under /gcs, /minio and /s3 (emptyDirs on current backends): owned by the user for older ones.
RUN groupadd --system --gid 10001 lulc \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/lulc --create-home --shell /usr/sbin/nologin lulc \
    && mkdir -p /gcs /minio /s3 \
    && chown 10001:10001 /gcs /minio /s3

WORKDIR /app
COPY conf/ conf/

# Read-only root filesystem: everything written at run time goes under /tmp (an emptyDir in Kubernetes).
# MALLOC_ARENA_MAX=2: glibc's per-thread arenas made the predictor's RSS creep under concurrent requests
# (benchmarks/serving_load: +4 % per load level without it, flat with it).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/lulc \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    HF_HOME=/tmp/.cache/huggingface \
    LULC_IMAGE_REVISION=${GIT_SHA} \
    MALLOC_ARENA_MAX=2

USER 10001:10001
EXPOSE 8080

# ---------------------------------------------------------------------------------------------------------------
FROM runtime-base AS predictor

COPY --from=builder /opt/venv-serve /opt/venv
# Serves by default: the model from LULC_MODEL (a bundle directory, NAME@STAGE or a Neptune id such as LULC-SEG-2)
# or /mnt/models, the port from PORT (8080), ROOT_PATH behind a proxy; `docker run --env-file .env` (.env_template).
# KServe's InferenceService names its own command; KFP components run `python -m ...` in this image.
CMD ["python", "-m", "serving", "--host", "0.0.0.0"]

# ---------------------------------------------------------------------------------------------------------------
FROM runtime-base AS runtime

COPY --from=builder /opt/venv /opt/venv
# The full image serves by default too (KServe and KFP name their own commands).
CMD ["python", "-m", "serving", "--host", "0.0.0.0"]
