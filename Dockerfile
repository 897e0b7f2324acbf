# apigate's container image: `docker build -t apigate:0.1.0 .` (deploy/k8s uses image "apigate").
#
# Stage 1 builds a wheel from the sources, installs it into a virtualenv, and compiles the
# data plane's hot modules with mypyc (scripts/build_native.py, as `make install` does)
# into extensions placed beside the installed sources. Stage 2 is a slim Python with that
# virtualenv, the operations scripts, kubectl and openssl (the config-backup CronJob runs
# scripts/backup-config.sh from this image) and curl (the guide's §4.4 drill runs
# `kubectl exec POD -- curl -s http://localhost:8080/health/live`), as a non-root user.
#
# tests/deploy/test_image.py runs the wheel and virtualenv steps below on the host (no
# container engine there) and checks that this file still says what it runs.

FROM python:3.11-slim-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
COPY scripts/build_native.py scripts/
# The wheel: pure sources.
RUN python -m pip wheel --no-deps --wheel-dir /wheels .
# The runtime virtualenv, from the wheel.
RUN python -m venv /opt/apigate \
 && /opt/apigate/bin/pip install --no-cache-dir /wheels/apigate-*.whl
# The compiled data plane: mypyc (pinned as in pyproject.toml's test extra) builds the hot
# modules in /src/src; CI=true makes a failed compile fail the image build instead of
# quietly shipping the slower pure-Python build. The extensions are then copied beside the
# installed sources, after them, so apigate's freshness check (src/apigate/_native.py) uses them.
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir /wheels/apigate-*.whl "mypy==2.4.1" "types-PyYAML==6.0.12.20261122" \
 && CI=true /opt/build/bin/python scripts/build_native.py \
 && cd src && find . -name '*.so' -exec cp --parents {} /opt/apigate/lib/python3.11/site-packages/ \; \
 && /opt/apigate/bin/apigate --version | grep -q compiled

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssl kubernetes-client curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 apigate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin apigate \
 && mkdir -p /etc/apigate /var/lib/apigate/spool /var/log/api-gateway \
 && chown 10001:10001 /var/lib/apigate/spool /var/log/api-gateway
COPY --from=builder /opt/apigate /opt/apigate
COPY scripts/ /app/scripts/
ENV PATH=/opt/apigate/bin:$PATH \
    APIGATE_CONFIG=/etc/apigate/config.yaml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080 9090
# /health/live on the metrics port (observability.metrics_port, 9090 in deploy/config).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health/live', timeout=2)"]
ENTRYPOINT ["apigate", "serve"]
