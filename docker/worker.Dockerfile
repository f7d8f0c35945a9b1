# syntax=docker/dockerfile:1
# adapterd worker image: torch (CPU build) + the project with its [worker] extra.
#   docker build -f docker/worker.Dockerfile -t adapterd/worker .
# Default command: the inference worker. docker-compose.yml runs the trainer from the same image
# with `command: ["python", "-m", "worker.trainer"]`.
# The build context is the repository root (see docker-compose.yml and .dockerignore).

FROM python:3.11.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY adapterd ./adapterd
COPY adapters_store ./adapters_store
COPY service ./service
COPY worker ./worker
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .


FROM python:3.11.11-slim-bookworm

# Keep in step with the torch pin in pyproject.toml's [worker] extra (a unit test checks it).
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ADAPTERD_DATA_DIR=/data

# The same uid/gid as the API image: both write the shared blob store under /data.
RUN groupadd --system --gid 10001 adapterd \
    && useradd --system --uid 10001 --gid adapterd --create-home --home-dir /home/adapterd adapterd \
    && mkdir -p /data \
    && chown adapterd:adapterd /data

# torch first, from the CPU-only index, so the [worker] extra finds it satisfied and never pulls
# the multi-GB CUDA build from PyPI.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/adapterd-*.whl)[worker,s3]" \
    && rm -rf /wheels \
    && python -c "import torch; assert not torch.version.cuda, torch.version.cuda"

USER 10001:10001
WORKDIR /home/adapterd
VOLUME ["/data"]

# The process check is all a container-level probe can do without knowing the worker id; real
# liveness is the worker's Redis heartbeat, which the API's /readyz reports.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys; sys.exit(b'worker.' not in open('/proc/1/cmdline', 'rb').read())"]

CMD ["python", "-m", "worker.inference"]
