# Registry Config Gateway: runtime image. Only runtime dependencies (requirements/runtime.lock,
# hash-checked); no moto, no dev tools. Config comes from a mounted file.
# syntax=docker/dockerfile:1

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/gateway
COPY requirements/runtime.lock requirements/runtime.lock
RUN /opt/gateway/bin/pip install --require-hashes -r requirements/runtime.lock
COPY pyproject.toml README.md ./
# The server's own generated code is in service/gen/: the client is not installed.
COPY service service
RUN /opt/gateway/bin/pip install --no-deps . \
 && /opt/gateway/bin/python -c "import importlib.util as u; assert u.find_spec('moto') is None"

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /opt/gateway /opt/gateway
# `docker build --build-arg COMMIT=$(git rev-parse HEAD)`: what `--version` and
# registry_gateway_build_info report as the commit (the image has no git checkout).
ARG COMMIT=unknown
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REGISTRY_GATEWAY_CONFIG=/etc/registry-gateway/gateway.yaml \
    REGISTRY_GATEWAY_COMMIT=$COMMIT
USER 10001:10001
EXPOSE 50051 8081
# SIGTERM starts the drain (health NOT_SERVING, serve drain_seconds, then stop with grace).
STOPSIGNAL SIGTERM
ENTRYPOINT ["registry-gateway", "serve"]
CMD ["--listen", "0.0.0.0:50051"]
