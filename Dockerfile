# smtp-exporter container image.
#
# Build:  docker build -t smtp-exporter:0.1.0 .
# Run:    docker run --rm -p 9725:9725 smtp-exporter:0.1.0 --config.file=/etc/smtp-exporter/config.yml
#
# Two stages: the first installs the exporter and its pinned dependencies (constraints.txt)
# into a virtual environment; the second copies only that environment onto the same slim
# base, so no pip cache, source tree or build tooling reaches the final image. Every
# dependency ships manylinux wheels, so no compiler is needed in either stage. Both stages use
# the same pinned base, so the virtual environment's interpreter links stay valid.

FROM python:3.11.13-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/smtp-exporter
ENV PATH=/opt/smtp-exporter/bin:$PATH
WORKDIR /src
# Dependencies first: this layer is reused as long as the pins do not change.
COPY constraints.txt ./
RUN pip install --no-cache-dir -r constraints.txt
COPY pyproject.toml README.md ./
COPY smtp_exporter ./smtp_exporter
RUN pip install --no-cache-dir -c constraints.txt ".[uvloop]" \
    && smtp-exporter --version

FROM python:3.11.13-slim-bookworm
LABEL org.opencontainers.image.title="smtp-exporter" \
      org.opencontainers.image.description="Prometheus exporter that health-checks mail servers with a real SMTP conversation, phase by phase" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/smtp-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/smtp-exporter /opt/smtp-exporter
# A numeric, unprivileged user with no entry in /etc/passwd: nothing in the image runs as root,
# and Kubernetes' runAsNonRoot can verify the UID without resolving a name.
USER 65532:65532
EXPOSE 9725
# For plain `docker run`; Kubernetes ignores it and uses the liveness/readiness probes.
# Assumes the default plain-HTTP listener on :9725 (/-/healthy never requires auth).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9725/-/healthy', timeout=4)"]
ENTRYPOINT ["smtp-exporter"]
