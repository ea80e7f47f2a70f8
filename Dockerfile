# ferry translation server image (Docker or podman; see docs/deploy.md).
#
#   docker build -t ferry:cuda .                              # NVIDIA GPU (default)
#   docker build -t ferry:cpu --build-arg VARIANT=cpu .       # machines without a GPU
#   podman build --format docker -t ferry:cpu --build-arg VARIANT=cpu .   # podman: keep HEALTHCHECK
#   docker run --rm -p 127.0.0.1:50051:50051 ferry:cpu
#
# Behind a package mirror or a TLS-intercepting proxy (nothing of it reaches the final image):
#   --build-arg PIP_INDEX_URL=https://mirror/simple   (also PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST)
#   --build-arg TORCH_INDEX_URL=https://mirror/whl/cpu   (empty: take torch from PIP_INDEX_URL)
#   --secret id=pip_ca,src=/path/to/ca-bundle.pem     (the CA pip should trust)
#
# Configuration: every `ferry serve` flag has a FERRY_* environment default (FERRY_PORT,
# FERRY_MAX_BATCH_TOKENS, FERRY_DRAIN_TIMEOUT, ...); flags given after the image name win.
# No `# syntax=` line on purpose: the builder's own Dockerfile frontend is enough, and builds
# stay possible where Docker Hub is not reachable.

ARG VARIANT=cuda
# Fully qualified names (podman refuses ambiguous short names). The CUDA base must carry the
# torch of TORCH_VERSION; pick the CUDA build your driver supports (`nvidia-smi` shows it).
ARG CUDA_BASE_IMAGE=docker.io/pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
ARG CPU_BASE_IMAGE=docker.io/library/python:3.11-slim
ARG TORCH_VERSION=2.13.0
# Where the CPU variant gets torch: the CPU-only wheel index. Empty = whatever index pip is
# configured with (a mirror); the build then fails unless that index served a CPU-only torch.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# --- GPU base: the official PyTorch runtime image (CUDA + cuDNN + torch already installed).
FROM ${CUDA_BASE_IMAGE} AS base-cuda
ENV FERRY_DEVICE=auto

# --- CPU base: slim Python; the build stage adds the CPU-only torch wheel.
FROM ${CPU_BASE_IMAGE} AS base-cpu
ENV FERRY_DEVICE=cpu

# --- Build stage: a virtual environment at /opt/ferry/venv with torch (CPU variant), the
# pinned dependencies and ferry itself. Only that directory leaves this stage.
FROM base-${VARIANT} AS build
ARG VARIANT
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
# Package mirror settings: build arguments of this stage only (pip reads them from the
# environment); the runtime stage below never sees them.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/ferry/venv/bin:$PATH

COPY deploy/image-constraints.txt /opt/ferry/constraints.txt

# The CUDA variant's venv sees the base image's torch (system site packages); the CPU one is
# empty and gets the CPU-only wheel, minus what only building or testing torch needs (C++
# headers, test binaries: about 200 MB). Either way the build fails here unless torch is the
# pinned version and, for the CPU image, a build without CUDA.
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && if [ "$VARIANT" = cpu ]; then \
         python -m venv /opt/ferry/venv \
         && pip install -c /opt/ferry/constraints.txt ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
              "torch==${TORCH_VERSION}" \
         && t="$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/torch" \
         && rm -rf "$t/test" "$t/include" "$t/share" "$t/lib/libtorchbind_test.so" \
         && find "$t/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} + ; \
       else \
         python -m venv --system-site-packages /opt/ferry/venv; \
       fi \
    && python -c "import sys, torch, importlib.metadata as md; \
v, cuda = torch.__version__, torch.version.cuda; \
gpu_libs = sorted(d.metadata['Name'] for d in md.distributions() if d.metadata['Name'].lower().startswith(('nvidia-', 'triton'))); \
ok_version = v.split('+')[0] == '${TORCH_VERSION}'; \
ok_kind = (cuda is None and not gpu_libs) if '${VARIANT}' == 'cpu' else cuda is not None; \
print(f'torch {v} (CUDA {cuda}), GPU packages: {gpu_libs or \"none\"}'); \
sys.exit(0 if ok_version and ok_kind else f'${VARIANT} image: expected torch ${TORCH_VERSION} ' \
  + ('without CUDA; set TORCH_INDEX_URL to a CPU-only wheel index (e.g. https://download.pytorch.org/whl/cpu or its mirror)' \
     if '${VARIANT}' == 'cpu' else 'with CUDA from CUDA_BASE_IMAGE') + f', got torch {v} (CUDA {cuda})')"

# Dependencies first, from pyproject.toml and the pinned versions alone, so that editing the
# source reuses this layer. torch is already installed and satisfies the `server` extra.
WORKDIR /opt/ferry/src
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['server']))" > /tmp/requirements.txt \
    && pip install -c /opt/ferry/constraints.txt -r /tmp/requirements.txt setuptools \
    && rm /tmp/requirements.txt

# The package itself, built as a wheel and installed into the venv (no editable install, no
# source tree in the final image).
COPY README.md ./
COPY ferry/ ferry/
COPY model/ model/
COPY server/ server/
COPY client/ client/
COPY proto/ proto/
RUN pip install --no-deps --no-build-isolation ".[server]" \
    && if [ "$VARIANT" = cpu ]; then pip check; fi \
    && ferry --help > /dev/null \
    && python -m pip uninstall --yes --quiet pip

# ferry's native CPU kernels (model/attend.c: decoder attention, search top-k; model/gemm.c and
# model/qgemm.c: the float32 and int8 Linears; model/step.c: a decode step's layers in one call; no
# OpenMP library is linked: threads use the runtime torch loads), compiled beside the installed
# package, where ferry looks first: the runtime stage has no compiler and a read-only root
# filesystem. The library carries an AVX2/FMA and a baseline x86-64 version and
# picks one on the machine it runs on. The compiler stays in this stage. (Run from / : in the
# source folder, `ferry` would name the source tree, not the installed package.)
RUN if ! command -v cc > /dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && cd / \
    && python -m ferry.model.native --build \
    && python -c "from ferry.model import native; assert native.library() is not None"

# --- Runtime: the base image, the venv and the model; no compilers, pip caches or sources.
FROM base-${VARIANT} AS runtime
ARG VARIANT
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=
LABEL org.opencontainers.image.title="ferry" \
      org.opencontainers.image.description="Neural machine translation server (gRPC, continuous batching), ${VARIANT} build" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}"

RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin ferry

COPY --from=build /opt/ferry/venv /opt/ferry/venv
# The default model: large and rarely changed, so it comes before anything that changes often.
COPY models/ /opt/ferry/models/

# Nothing is written at run time: the root filesystem may be mounted read-only.
ENV PATH=/opt/ferry/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FERRY_DEFAULT_MODEL=/opt/ferry/models/en-de

WORKDIR /home/ferry
USER 10001

# Listen on every interface of the container (the server's own default is loopback only):
# gRPC, Prometheus metrics and the HTTP API. Publish them on the host as narrowly as you need.
# The drain fits the engines' default stop timeout (10 s): raise both together, e.g.
# `docker run --stop-timeout 30 -e FERRY_DRAIN_TIMEOUT=20` (compose: stop_grace_period).
ENV FERRY_HOST=0.0.0.0 \
    FERRY_METRICS_HOST=0.0.0.0 \
    FERRY_PORT=50051 \
    FERRY_METRICS_PORT=9090 \
    FERRY_HTTP_PORT=8080 \
    FERRY_DRAIN_TIMEOUT=8
EXPOSE 50051 9090 8080

# SIGTERM starts the server's drain: health turns NOT_SERVING, accepted calls finish, exit 0.
STOPSIGNAL SIGTERM

# grpc.health.v1 probe: exit 0 serving, 2 unreachable, 4 not serving (e.g. while draining).
# The shell form of the address follows a port changed through FERRY_PORT. podman keeps this
# only in images built with `--format docker`.
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["sh", "-c", "exec ferry health --server \"127.0.0.1:${FERRY_PORT:-50051}\""]

ENTRYPOINT ["ferry", "serve"]
CMD []
