# jouletrace exporter image: multi-stage, slim runtime, non-root. The base is pinned to a patch
# release; pin its digest too where your registry mirrors it (--build-arg PYTHON_IMAGE=...@sha256:...).
# Build it with Docker, or with buildah or podman in the Docker format (`--format docker`): the OCI
# format has no HEALTHCHECK and drops it (docs/kubernetes.md, "The image").
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# Where the runtime stage takes its wheels: `build` (the stage below, which needs a package index) or
# `prebuilt` (the build context's wheels/ folder, for builds that cannot reach one; the wheels are
# built outside for the base's Python, as tests/deploy/test_image.py does)
ARG WHEELS=build

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jouletrace ./jouletrace
COPY exporter ./exporter
COPY loadgen ./loadgen
COPY simulator ./simulator
COPY serving ./serving
COPY grafana ./grafana
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM scratch AS prebuilt
COPY wheels/ /wheels/

FROM ${WHEELS} AS wheels

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="jouletrace" \
      org.opencontainers.image.description="GPU energy attributed to inference requests and tokens, for Prometheus" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin jouletrace
USER 10001
EXPOSE 9464 4317 4318
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2).status != 200)"
ENTRYPOINT ["jouletrace", "exporter"]
