# syntax=docker/dockerfile:1
# The operator (`kubechat-operator`), deployed by charts/kubechat. Build from the repo root:
#   docker build -f images/operator.Dockerfile -t kubechat/operator:0.1.0 .
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
# One distribution holds the chat service and the operator; both images install the same wheel, each
# with its own extra (here `operator`: no openai, tiktoken, azure or FastAPI), into a venv without pip.
# The .pyc are compiled once, hash-based: valid on a read-only root whatever the files' mtimes (a
# reproducible build fixes them all).
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/kubechat \
    && set -- /wheels/kubechat-*.whl \
    && python -m pip --python /opt/kubechat/bin/python install --no-compile "$1[operator]" \
    && /opt/kubechat/bin/python -m compileall -q -j0 --invalidation-mode unchecked-hash /opt/kubechat/lib

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG SOURCE=""
ARG REVISION=""
LABEL org.opencontainers.image.title="kubechat-operator" \
      org.opencontainers.image.description="kubechat operator: ChatBot resources to Deployments, Services, ConfigMaps" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# SOURCE_DATE_EPOCH, when given, is the accounts' "last changed" date (useradd reads it).
ARG SOURCE_DATE_EPOCH
# uid 10001 as the chart's securityContext (runAsUser: 10001), numeric so runAsNonRoot can check it.
RUN groupadd --system --gid 10001 kubechat \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kubechat
COPY --from=builder /opt/kubechat /opt/kubechat
ENV PATH=/opt/kubechat/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# Kopf's liveness endpoint (--liveness http://0.0.0.0:8081/healthz).
EXPOSE 8081
ENTRYPOINT ["kubechat-operator"]
CMD ["--all-namespaces"]
