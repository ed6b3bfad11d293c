# relayd container image: docker build -t relayd . (see README "Docker").
# Build stage: a wheel of relayd and its dependencies, so the runtime stage has no build tools.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relayd ./relayd
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="relayd" \
      org.opencontainers.image.description="Outbound-mail relay: accept locally, store durably, deliver upstream within provider limits"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RELAYD_CONFIG=/etc/relayd/relayd.toml
# A dedicated unprivileged user; the queue directory is its own.
RUN groupadd --system --gid 10001 relayd \
    && useradd --system --uid 10001 --gid relayd --home-dir /var/lib/relayd \
       --shell /usr/sbin/nologin relayd \
    && mkdir -p /var/lib/relayd /etc/relayd \
    && chown relayd:relayd /var/lib/relayd \
    && chmod 0750 /var/lib/relayd
COPY --from=build /wheels /wheels
# Exactly the wheels built above (relayd and its pinned-by-build dependencies), offline.
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
    && rm -rf /wheels
COPY docker/relayd.toml /etc/relayd/relayd.toml
USER 10001:10001
WORKDIR /var/lib/relayd
VOLUME ["/var/lib/relayd"]
# 2525: SMTP intake (server.listen); 9025: /healthz /readyz /metrics (admin.listen).
EXPOSE 2525 9025
# SIGTERM: relayd stops accepting, finishes in-flight deliveries (queue.shutdown_timeout,
# default 30s) and exits 0. Give it longer than that: docker run --stop-timeout 45
# (docker stop -t 45; compose: stop_grace_period: 45s); the default 10s cuts deliveries short.
STOPSIGNAL SIGTERM
# /readyz answers 503 when the queue cannot be written or the listener is down; urlopen
# raises on it, so the check fails. A paused upstream (throttled, AUTH failing) is only a
# warning in /readyz (200): mail is still accepted and queued.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9025/readyz', timeout=4)"]
ENTRYPOINT ["relayd"]
CMD ["run", "-c", "/etc/relayd/relayd.toml"]
