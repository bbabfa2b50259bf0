# syntax=docker/dockerfile:1
# The chat service (`kubechat serve`), the image the operator runs for every bot. Build from the repo root
# with the tiktoken encodings seeded into the context first (docs/install.md, "Images"):
#   kubechat seed-encodings --from ../shared/tiktoken --to images/tiktoken
#   docker build -f images/chatbot.Dockerfile -t kubechat/chatbot:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# A reproducible build passes SOURCE_DATE_EPOCH (pip's wheel timestamps come from it); an offline or
# air-gapped one passes pip's own settings, e.g. PIP_NO_INDEX=1 PIP_FIND_LINKS=/mnt with a wheelhouse there.
ARG SOURCE_DATE_EPOCH
ARG PIP_INDEX_URL
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY chatbot_service/ chatbot_service/
COPY operator/ operator/
# The wheel, then a venv with it and the chat service's dependencies (its `service` extra: no kopf),
# installed by the builder's pip so the venv carries no pip (all dependencies ship wheels: no compiler).
# The .pyc are compiled once, hash-based: valid on a read-only root whatever the files' mtimes (a
# reproducible build fixes them all).
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/kubechat \
    && set -- /wheels/kubechat-*.whl \
    && python -m pip --python /opt/kubechat/bin/python install --no-compile "$1[service]" \
    && /opt/kubechat/bin/python -m compileall -q -j0 --invalidation-mode unchecked-hash /opt/kubechat/lib

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG SOURCE=""
ARG REVISION=""
LABEL org.opencontainers.image.title="kubechat-chatbot" \
      org.opencontainers.image.description="kubechat chat service: one ChatBot's HTTP API and chat page" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# SOURCE_DATE_EPOCH, when given, is the accounts' "last changed" date (useradd reads it).
ARG SOURCE_DATE_EPOCH
# uid 10001, numeric in USER so that runAsNonRoot can check it; the operator's pods run as it too.
RUN groupadd --system --gid 10001 kubechat \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kubechat
# jemalloc instead of glibc's malloc (ENV below): tiktoken's Rust tables are 600k small allocations, which
# glibc rounds up to 32 bytes each and jemalloc packs into 8- and 16-byte classes: ~10 MiB less idle RSS
# (bench/service_memory.py). The local build's Debian base carries it already (localcluster/imageinputs.py).
# hadolint ignore=DL3008
RUN dpkg -s libjemalloc2 >/dev/null 2>&1 || { apt-get update \
    && apt-get install -y --no-install-recommends libjemalloc2 && rm -rf /var/lib/apt/lists/*; }
COPY --from=builder /opt/kubechat /opt/kubechat
# tiktoken would download its encodings on first use; pods may have no way out, so they travel here.
COPY images/tiktoken/ /opt/kubechat/tiktoken/
# MALLOC_CONF: one arena (one event loop thread) and freed pages handed back at once, so the tokenizer's
# load-time temporaries leave nothing behind (without it they stay until the next allocations purge them).
# DL3064 takes TIKTOKEN_CACHE_DIR for a secret by its name; it is a folder of public encodings.
# hadolint ignore=DL3064
ENV PATH=/opt/kubechat/bin:$PATH \
    LD_PRELOAD=libjemalloc.so.2 \
    MALLOC_CONF=narenas:1,dirty_decay_ms:0,muzzy_decay_ms:0 \
    TIKTOKEN_CACHE_DIR=/opt/kubechat/tiktoken \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080
# The operator renders `args: [serve, --host, 0.0.0.0, --port, "8080"]`: the entrypoint must be kubechat.
ENTRYPOINT ["kubechat"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
