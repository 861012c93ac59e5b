# One image for every role: `phasescreen serve` (api), `phasescreen worker` (one per GPU), `phasescreen db upgrade`.
# Two stages: the first builds phasescreen's wheel from the checkout, the second installs the locked runtime
# dependencies (requirements.lock, with hashes) and that wheel, so the image holds the same versions on any day.

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY phasecore phasecore
COPY problems problems
COPY store store
COPY jobs jobs
COPY service service
COPY worker worker
COPY cli cli
COPY migrations migrations
COPY grids grids
RUN pip wheel --no-cache-dir --no-deps -w /dist .

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

# every runtime package at its locked version and hash (torch's Linux wheel carries the CUDA runtime the
# workers use); --no-deps: the lock lists them all. Then the wheel, whose migrations and grids ship inside it.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --require-hashes --no-deps -r /tmp/requirements.lock
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/phasescreen-*.whl && pip check && rm -rf /tmp/dist /tmp/requirements.lock

WORKDIR /var/lib/phasescreen
USER phasescreen
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1
CMD ["phasescreen", "serve", "--host", "0.0.0.0", "--port", "8000"]
