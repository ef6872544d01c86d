# flowerdemo Gradio app. CPU by default; see docs/deploy.md for the CUDA and podman variants.
#   docker build -t flowerdemo .  &&  docker run --rm -p 7860:7860 flowerdemo
# Works on python:3.11-slim and on a plain Debian/Ubuntu base with python3 + python3-venv
# (deps go into a venv at /opt/venv, so PEP 668 "externally managed" system Pythons are fine).
ARG BASE=python:3.11-slim
FROM ${BASE}

# Empty TORCH_INDEX = PyPI's default torch (on Linux x86_64 that is the CUDA build: much bigger).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Pinned to the versions the project is tested with; override to float, e.g. "torch torchvision".
ARG TORCH_PACKAGES="torch==2.14.1 torchvision==0.29.1"
# Optional CA bundle for pip behind a TLS-intercepting proxy (path inside the build container).
ARG PIP_CA_BUNDLE=

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# One layer for venv + user + torch: torch is the slow, big part and changes least.
RUN set -eux; \
    PY="$(command -v python3 || command -v python)"; \
    "$PY" -m venv /opt/venv; \
    useradd --create-home --uid 1000 --shell /usr/sbin/nologin app 2>/dev/null \
      || useradd --create-home --shell /usr/sbin/nologin app; \
    pip install ${PIP_CA_BUNDLE:+--cert "$PIP_CA_BUNDLE"} ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} $TORCH_PACKAGES

WORKDIR /app
COPY requirements.txt .
# torch is already satisfied, so this layer holds only the light dependencies.
RUN pip install ${PIP_CA_BUNDLE:+--cert "$PIP_CA_BUNDLE"} -r requirements.txt

# What is copied is decided by .dockerignore (an allow-list: app, package, bundled checkpoint).
# Owned by `app` so the UI can write training runs into /app/checkpoints.
COPY --chown=app:app . .

USER app
EXPOSE 7860
ENV GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_DISABLE_TELEMETRY=1

# No curl in slim images: a stdlib GET of the page, on whatever port the app was told to use.
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('GRADIO_SERVER_PORT', '7860'), timeout=4)"]

CMD ["python", "app.py"]
