# One image for every service of the platform; the command picks the service and port (docker-compose.yml,
# deploy/k8s/), e.g. `uvicorn services.flashsale.main:app --host 0.0.0.0 --port 8102`.
#
#   docker build -t flashsale-platform:0.1.0 .                          the services (target runtime)
#   docker build --target loadgenerator -t flashsale-loadgen:0.1.0 .    the same plus the load tools and Locust
#
# Stages: `build` installs the package and its dependencies into a virtual environment (binary wheels; no
# compiler is needed or kept); `runtime` is a fresh slim Python with only that environment, run as a
# non-root user. The base is pinned to one Python release; bump PYTHON_IMAGE deliberately.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject.toml alone (an empty package stands in for the code), so that a code
# change rebuilds only the layers below.
COPY pyproject.toml README.md ./
RUN mkdir services && touch services/__init__.py \
 && pip install . \
 && pip uninstall -y flashsale-platform \
 && rm -rf services build *.egg-info
# Then the code: the packages with their Lua scripts and migrations (package data), installed, not copied.
COPY services ./services
COPY gateway ./gateway
RUN pip install --no-deps . \
 && python -c "import services.flashsale.main, gateway.main"

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000 8101 8111 8102 8112 8103 8113 8104 8114 8105 8115
# For `docker run` of the default command; compose and Kubernetes probe each service on its own port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8102/healthz/live', timeout=2).status != 200)"]
CMD ["uvicorn", "services.flashsale.main:app", "--host", "0.0.0.0", "--port", "8102", "--no-access-log", \
     "--loop", "uvloop", "--http", "services.common.server:CoalescingHttpProtocol", "--timeout-graceful-shutdown", "10"]

# The load generator: the runtime plus Locust and loadtest/ (seed, locustfile, checker), for the in-cluster
# load test (deploy/k8s/components/loadgenerator).
FROM runtime AS loadgenerator
USER root
COPY deploy ./deploy
COPY loadtest ./loadtest
RUN pip install --no-cache-dir "locust>=2.30" "pyyaml>=6"
USER 10001:10001
CMD ["locust", "-f", "loadtest/locustfile.py", "--help"]
