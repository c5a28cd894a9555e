# agno-exporter image: the package installed with the README's own install step, run as non-root.
#   docker build -t agno-exporter .
#   docker run --rm -p 9477:9477 -e DATABASE_URL=postgresql://... agno-exporter collect
# docker-compose.yml builds it and runs `agno-exporter run -c /etc/agno-exporter/config.yaml`.
# CPython 3.13: within the supported 3.11-3.14 (pyproject.toml's requires-python and classifiers), and the
# newest CPython .ci/run runs today. A glibc (Debian) image: the embedded PostgreSQL's wheels are manylinux.
FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# The README's install step, unchanged: one source of truth for what the package needs.
RUN pip install .

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/agno agno
USER 10001:10001
WORKDIR /home/agno

# /metrics, /healthz, /readyz
EXPOSE 9477

ENTRYPOINT ["agno-exporter"]
CMD ["collect"]
