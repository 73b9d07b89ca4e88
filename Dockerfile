# syntax=docker/dockerfile:1
# The lulc project image: every KFP component and the KServe predictor run in it.
#
#   CPU (default):  docker build -t REGISTRY/lulc:$(git rev-parse HEAD) .
#   CUDA (GPU):     docker build --build-arg TORCH_VARIANT=cu128 -t REGISTRY/lulc:$(git rev-parse HEAD)-cuda .
#
# The install steps are the ones `make test` runs (tests/test_images.py compares them), so a green CI cannot hide a
# dependency the image lacks. The CPU and the CUDA image differ only in the index torch's build comes from
# (PIP_EXTRA_INDEX_URL, from TORCH_VARIANT): the command `pip install torch==2.13.0` itself is the same.
# No HEALTHCHECK: Kubernetes probes the predictor (readiness/liveness in manifests/).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# cpu -> the CPU-only torch build; cu126, cu128, ... -> a CUDA build for GPU training nodes.
ARG TORCH_VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY lulc_core/ lulc_core/
COPY lulc/ lulc/
COPY components/ components/
COPY pipelines/ pipelines/
COPY serving/ serving/

# Same steps, same order as the Makefile's venv target (without the dev extras and without -e).
# Separate RUN steps on purpose (DL3059): the torch layer is large and changes rarely, so it stays cached.
# hadolint ignore=DL3013
RUN pip install -q --upgrade pip
# torch first, its build chosen by TORCH_VARIANT (the extra index applies to this step only).
# hadolint ignore=DL3059
RUN PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT} pip install -q torch==2.13.0
# hadolint ignore=DL3059
RUN pip install -q -c requirements.lock . \
    && python -c "import lulc_core, lulc.cli, components, pipelines, serving"

# ---------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG GIT_SHA=unknown
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="lulc" \
      org.opencontainers.image.description="Train, register and serve land-use/land-cover segmentation models." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      io.lulc.torch-variant="${TORCH_VARIANT}"

# A fixed, non-zero UID/GID so that Kubernetes' runAsNonRoot / runAsUser checks can verify it. The KFP v2 launcher
# stages artifacts under /gcs, /minio and /s3 (emptyDirs on current backends): owned by the user for older ones.
RUN groupadd --system --gid 10001 lulc \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/lulc --create-home --shell /usr/sbin/nologin lulc \
    && mkdir -p /gcs /minio /s3 \
    && chown 10001:10001 /gcs /minio /s3

COPY --from=builder /opt/venv /opt/venv
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
# Serves by default: the model from LULC_MODEL (a bundle directory, NAME@STAGE or a Neptune id such as LULC-SEG-2)
# or /mnt/models, the port from PORT (8080), ROOT_PATH behind a proxy; `docker run --env-file .env` (.env_template).
# KServe's InferenceService names its own command; KFP components run `python -m ...` in this image.
CMD ["python", "-m", "serving", "--host", "0.0.0.0"]
