# syntax=docker/dockerfile:1
#
# ferry translation server image.
#
#   docker build -t ferry:cuda .                        # NVIDIA GPU (default)
#   docker build -t ferry:cpu --build-arg VARIANT=cpu .  # machines without a GPU
#   docker run --gpus all -p 50051:50051 -p 9090:9090 ferry:cuda
#
# Configuration: every `ferry serve` flag has a FERRY_* environment default (FERRY_PORT,
# FERRY_MAX_BATCH_TOKENS, FERRY_DRAIN_TIMEOUT, ...); flags given after the image name win.
# See docs/deployment.md. The image builds with BuildKit (the default builder): only the base
# stage that VARIANT names is built.

ARG VARIANT=cuda
# The CUDA base must carry the same torch as the CPU pin below; pick the CUDA build that your
# driver supports (`nvidia-smi` shows the highest CUDA version it can run).
ARG CUDA_BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
ARG CPU_BASE_IMAGE=python:3.11-slim
ARG TORCH_VERSION=2.13.0

# --- GPU base: the official PyTorch runtime image (CUDA + cuDNN + torch already installed).
FROM ${CUDA_BASE_IMAGE} AS base-cuda
ENV FERRY_DEVICE=auto

# --- CPU base: slim Python with the CPU-only torch wheel (no CUDA libraries, ~10x smaller).
FROM ${CPU_BASE_IMAGE} AS base-cpu
ARG TORCH_VERSION
RUN python -m pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
ENV FERRY_DEVICE=cpu

# --- The server, on whichever base VARIANT selects.
FROM base-${VARIANT} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin ferry

WORKDIR /opt/ferry/src

# Dependencies first, from pyproject.toml alone, so that editing the source reuses this layer.
# torch is already in the base and satisfies the `server` extra's requirement, so pip keeps it.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['server']))" > /tmp/requirements.txt \
    && python -m pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The default model: large and rarely changed, so it comes before the source.
COPY models/ /opt/ferry/models/
ENV FERRY_DEFAULT_MODEL=/opt/ferry/models/en-de

# The package itself (with the `server` extra; its dependencies are all installed above).
COPY README.md ./
COPY ferry/ ferry/
COPY model/ model/
COPY server/ server/
COPY client/ client/
COPY proto/ proto/
RUN python -m pip install --no-deps ".[server]"

WORKDIR /home/ferry
USER ferry

# Listen on every interface of the container; gRPC and Prometheus metrics ports.
ENV FERRY_HOST=0.0.0.0 \
    FERRY_PORT=50051 \
    FERRY_METRICS_PORT=9090
EXPOSE 50051 9090

# SIGTERM starts the server's drain (stop accepting, finish in-flight work, exit). Give the
# container more time than the drain before SIGKILL: `docker stop -t 30`, compose's
# stop_grace_period, Kubernetes' terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM

# grpc.health.v1 probe: exit 0 serving, 2 unreachable, 4 not serving (e.g. while draining).
# The shell form of the address follows a port changed through FERRY_PORT.
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["sh", "-c", "exec ferry health --server \"127.0.0.1:${FERRY_PORT:-50051}\""]

ENTRYPOINT ["ferry", "serve"]
CMD []
