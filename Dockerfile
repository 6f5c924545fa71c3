# greenroom: one image for the API, the workers, beat and Flower (see docker-compose.yml).
#
# By default pip installs from PyPI onto python:3.12-slim. Where no registry or package
# index is reachable: `make compose-offline` (a local Debian base and deploy/wheelhouse/),
# then --build-arg BASE_IMAGE=greenroom/base:bookworm --build-arg INSTALL_FROM=wheelhouse.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ARG INSTALL_FROM=pypi
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY deploy/wheelhouse/ /wheelhouse/
COPY deploy/make-venv.sh pyproject.toml ./
# Dependencies in a layer of their own: kept while only greenroom's code changes.
RUN sh make-venv.sh /opt/greenroom "$INSTALL_FROM"
COPY README.md ./
COPY api/ api/
COPY workers/ workers/
COPY pool_manager/ pool_manager/
COPY bench/ bench/
COPY cli/ cli/
RUN /opt/greenroom/bin/pip install --no-deps . && rm -f /opt/greenroom/pip.conf

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title=greenroom \
      org.opencontainers.image.description="greenroom API, Celery workers, beat and Flower"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    VIRTUAL_ENV=/opt/greenroom PATH=/opt/greenroom/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY --from=build /opt/greenroom /opt/greenroom
# Numeric user: works without useradd and with a read-only root filesystem.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 5555
CMD ["greenroom", "--help"]
