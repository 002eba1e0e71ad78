# gradlab's two images, from one multi-stage build:
#
#   docker build --target api    -t gradlab-api .      # the API: `.[api]`, no PyTorch
#   docker build --target worker -t gradlab-worker .   # training: `.[worker]`, PyTorch for CUDA
#
# Both run as the non-root user gradlab (uid 10001) under tini, have `gradlab migrate` for the
# migration job, and stop on SIGTERM (uvicorn drains its requests; the Celery worker's warm
# shutdown hands its run back, so give it the grace period docs/deploy.md explains).
#
# Build arguments:
#   BASE_IMAGE     a Debian bookworm image (default debian:bookworm-slim); where no image
#                  registry is reachable, scripts/build_images.py makes one with debootstrap.
#   TORCH_VARIANT  worker only: `cuda` (default: PyPI's torch, CUDA 13 libraries included,
#                  which also trains on CPU nodes) or `cpu` (the CPU-only build of the same
#                  version from TORCH_CPU_INDEX_URL, about 4 GB smaller).
#
# Behind a TLS-intercepting proxy or with a private index, give pip its configuration as
# BuildKit secrets, which never reach an image layer:
#   --secret id=pip_conf,src=pip.conf --secret id=pip_ca,src=ca.pem
# (pip.conf may say `cert = /run/secrets/pip_ca`); scripts/build_images.py writes them from
# the machine's own pip settings.

ARG BASE_IMAGE=debian:bookworm-slim

# ---- runtime: what both final images share (Python 3.11, CA certificates, tini, the user) --
FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.vendor="gradlab" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.documentation="docs/deploy.md" \
      org.opencontainers.image.base.name="debian:bookworm"
ENV DEBIAN_FRONTEND=noninteractive
# Debian stable only ever ships security and bug fixes within a release, so the packages are
# taken at the release's current version (see .hadolint.yaml for DL3008).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gradlab \
    && useradd --system --uid 10001 --gid gradlab --home-dir /home/gradlab --create-home \
        --shell /usr/sbin/nologin gradlab \
    && install -d -o 10001 -g 10001 /checkpoints
# /checkpoints: the mount point of the folder checkpoint store (GRADLAB_CHECKPOINT_STORE=
# /checkpoints); a new named volume mounted there starts owned by uid 10001, so it is writable.
# Caches go to /tmp, so the containers run with a read-only root filesystem and an emptyDir
# (or tmpfs) there.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    GRADLAB_DATA_DIR=/data

# ---- builder: a virtual environment and pip (never in a final image) -----------------------
FROM runtime AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /src

# ---- requirements: the dependency lists, read from pyproject.toml. The install stages copy
# only these lists, so an edit elsewhere in pyproject.toml (a test tool, a marker) keeps
# their cached layers, PyTorch's among them ------------------------------------------------
FROM runtime AS requirements
WORKDIR /src
COPY pyproject.toml docker/requirements.py ./
RUN mkdir /requirements \
    && python3 requirements.py pyproject.toml api > /requirements/api.txt \
    && python3 requirements.py pyproject.toml worker > /requirements/worker.txt \
    && python3 requirements.py pyproject.toml worker --only torch torchvision \
        > /requirements/torch.txt

# ---- wheel: gradlab itself (the source is copied here only, so a code change rebuilds this
# stage and one small layer per image, never the dependency layers) -------------------------
FROM builder AS wheel
COPY pyproject.toml README.md ./
COPY api api
COPY cli cli
COPY client client
COPY core core
COPY dispatch dispatch
COPY migrations migrations
COPY observability observability
COPY science science
COPY services services
COPY settings settings
COPY store store
COPY worker worker
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/pip \
    pip wheel --disable-pip-version-check --no-deps --wheel-dir /wheels .

# ---- the API's dependencies: base + [api] ---------------------------------------------------
FROM builder AS api-deps
COPY --from=requirements /requirements/api.txt /tmp/
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/pip \
    pip install --disable-pip-version-check -r /tmp/api.txt

# ---- the worker's dependencies: PyTorch first (its own layer), then base + [worker] ---------
FROM builder AS worker-deps
ARG TORCH_VARIANT=cuda
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY --from=requirements /requirements/torch.txt /tmp/
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/pip \
    case "${TORCH_VARIANT}" in \
        cuda) pip install --disable-pip-version-check -r /tmp/torch.txt ;; \
        cpu) pip install --disable-pip-version-check --index-url "${TORCH_CPU_INDEX_URL}" \
                -r /tmp/torch.txt ;; \
        *) echo "TORCH_VARIANT must be cuda or cpu, not '${TORCH_VARIANT}'" >&2; exit 2 ;; \
    esac
COPY --from=requirements /requirements/worker.txt /tmp/
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/pip \
    pip install --disable-pip-version-check -r /tmp/worker.txt

# ---- worker: `gradlab worker` (one Celery child per visible GPU) -----------------------------
FROM runtime AS worker
LABEL org.opencontainers.image.title="gradlab-worker" \
      org.opencontainers.image.description="gradlab training worker (Celery, PyTorch)"
COPY --from=worker-deps /opt/venv /opt/venv
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --disable-pip-version-check --no-cache-dir --no-deps --no-index /wheels/*.whl
# What the NVIDIA container runtime mounts into the container: the driver and nvidia-smi.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /home/gradlab
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["gradlab", "worker"]

# ---- api: `gradlab api` on port 8000 (the default target) -----------------------------------
FROM runtime AS api
LABEL org.opencontainers.image.title="gradlab-api" \
      org.opencontainers.image.description="gradlab REST API (FastAPI), without PyTorch"
COPY --from=api-deps /opt/venv /opt/venv
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --disable-pip-version-check --no-cache-dir --no-deps --no-index /wheels/*.whl
USER 10001:10001
WORKDIR /home/gradlab
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["gradlab", "api", "--host", "0.0.0.0", "--port", "8000"]
