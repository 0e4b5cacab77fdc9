# One image for every service of the platform; the command picks the service and port
# (see docker-compose.yml), e.g. `uvicorn services.flashsale.main:app --host 0.0.0.0 --port 8102`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app

# Dependencies first, from pyproject.toml alone (an empty package stands in for the code), so that a code
# change rebuilds only the layers below.
COPY pyproject.toml README.md ./
RUN mkdir services && touch services/__init__.py \
 && pip install . \
 && pip uninstall -y flashsale-platform \
 && rm -rf services build *.egg-info

# Then the code: the package (Lua scripts and migrations included) and the sources beside it.
COPY services ./services
COPY gateway ./gateway
RUN pip install --no-deps . \
 && rm -rf build *.egg-info \
 && python -c "import services.flashsale.main, gateway.main"

USER app:app
EXPOSE 8000 8101 8111 8102 8112 8103 8113 8104 8114 8105 8115
CMD ["uvicorn", "services.flashsale.main:app", "--host", "0.0.0.0", "--port", "8102", "--no-access-log", \
     "--loop", "uvloop", "--http", "services.common.server:CoalescingHttpProtocol"]
