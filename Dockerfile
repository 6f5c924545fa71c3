# greenroom: one image for the API, the workers, beat and Flower (see docker-compose.yml).
# These build machines have no registry: pass a local base, --build-arg BASE_IMAGE=<tag>.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title=greenroom \
      org.opencontainers.image.description="greenroom API, Celery workers, beat and Flower"

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp

WORKDIR /src
COPY pyproject.toml README.md ./
COPY api/ api/
COPY workers/ workers/
COPY pool_manager/ pool_manager/
RUN pip install . && rm -rf /src

# Numeric user: works without useradd and with a read-only root filesystem.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 5555
CMD ["greenroom", "--help"]
