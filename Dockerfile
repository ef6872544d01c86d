# flowerdemo Gradio app. CPU by default; see docs/deploy.md for the CUDA and podman variants.
#   docker build -t flowerdemo .  &&  docker run --rm -p 7860:7860 flowerdemo
# Works on python:3.11-slim and on a plain Debian/Ubuntu base with python3 + python3-venv
# (deps go into a venv at /opt/venv, so PEP 668 "externally managed" system Pythons are fine).
ARG BASE=python:3.11-slim
FROM ${BASE}

# Where torch comes from. Default: PyTorch's CPU-only wheels (no CUDA libraries, a much smaller image).
# CUDA image: a CUDA index such as https://download.pytorch.org/whl/cu130, or empty = PyPI's default
# torch (on Linux x86_64 that is the CUDA build). Run it with `--gpus all` (docs/deploy.md).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Pinned to the versions the project is tested with; override to float, e.g. "torch torchvision".
ARG TORCH_PACKAGES="torch==2.14.1 torchvision==0.29.1"
# Optional CA bundle for pip behind a TLS-intercepting proxy (path inside the build container).
ARG PIP_CA_BUNDLE=
# Optional wheelhouse: folders of wheels inside the build container (space-separated), e.g. a bind
# mount with `podman build -v "$PWD/wheelhouse:/wheels:ro" --build-arg WHEELS=/wheels`. A step whose
# packages are all there installs offline from them (no download); otherwise pip uses the indexes as
# usual, with these folders as extra find-links. docs/deploy.md shows how to fill one.
ARG WHEELS=

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# One layer for venv + user + torch: torch is the slow, big part and changes least.
# (PIP_CERT / PIP_FIND_LINKS are exported per RUN only, so they do not end up in the image.)
RUN set -eux; \
    if [ -n "$PIP_CA_BUNDLE" ]; then export PIP_CERT="$PIP_CA_BUNDLE"; fi; \
    if [ -n "$WHEELS" ]; then export PIP_FIND_LINKS="$WHEELS"; fi; \
    PY="$(command -v python3 || command -v python)"; \
    "$PY" -m venv /opt/venv; \
    useradd --create-home --uid 1000 --shell /usr/sbin/nologin app 2>/dev/null \
      || useradd --create-home --shell /usr/sbin/nologin app; \
    if [ -n "$WHEELS" ] && pip install --no-index $TORCH_PACKAGES; then :; else \
      pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} $TORCH_PACKAGES; fi

WORKDIR /app
COPY requirements.txt .
# torch is already satisfied, so this layer holds only the light dependencies.
RUN set -eux; \
    if [ -n "$PIP_CA_BUNDLE" ]; then export PIP_CERT="$PIP_CA_BUNDLE"; fi; \
    if [ -n "$WHEELS" ]; then export PIP_FIND_LINKS="$WHEELS"; fi; \
    if [ -n "$WHEELS" ] && pip install --no-index -r requirements.txt; then :; else \
      pip install -r requirements.txt; fi; \
    python -c "import torch, torchvision, gradio; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'gradio', gradio.__version__)"

# What is copied is decided by .dockerignore (an allow-list: app, UI, package, examples, bundled
# checkpoint). Owned by `app` so the UI can write training runs into /app/checkpoints.
COPY --chown=app:app . .

USER app
EXPOSE 7860
ENV GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_DISABLE_TELEMETRY=1 \
    FLOWERDEMO_CHECKPOINT_DIR=/app/checkpoints

# No curl in slim images: a stdlib GET of the page, on whatever port the app was told to use.
# (podman keeps HEALTHCHECK only in docker-format images: `podman build --format docker`.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('GRADIO_SERVER_PORT', '7860'), timeout=4)"]

# The app runs as PID 1, where SIGTERM's default action is ignored: `docker stop` would wait 10 s and
# kill it. Python turns SIGINT into KeyboardInterrupt, on which Gradio closes the server cleanly.
STOPSIGNAL SIGINT
CMD ["python", "app.py"]
