# syntax=docker/dockerfile:1
# adapterd API image: the FastAPI service and the shared store, without torch.
#   docker build -f docker/api.Dockerfile -t adapterd/api .
# The build context is the repository root (see docker-compose.yml and .dockerignore).

FROM python:3.11.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY adapterd ./adapterd
COPY adapters_store ./adapters_store
COPY service ./service
# A wheel of the project only; its base dependencies (no torch) install in the runtime stage.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .


FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ADAPTERD_HOST=0.0.0.0 \
    ADAPTERD_PORT=8000 \
    ADAPTERD_DATA_DIR=/data

# The same uid/gid as the worker image: both write the shared blob store under /data.
RUN groupadd --system --gid 10001 adapterd \
    && useradd --system --uid 10001 --gid adapterd --create-home --home-dir /home/adapterd adapterd \
    && mkdir -p /data \
    && chown adapterd:adapterd /data

COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/adapterd-*.whl)[s3]" \
    && rm -rf /wheels \
    && python -c "import sys, service.app; assert 'torch' not in sys.modules"

USER 10001:10001
WORKDIR /home/adapterd
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# service.api_server: uvicorn with httptools, whose parse errors (an unknown method) get JSON bodies.
CMD ["python", "-m", "service.api_server", "--host", "0.0.0.0", "--port", "8000"]
