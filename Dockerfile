# kvcache: in-memory key-value cache over HTTP/1.1 on port 7171.
#
#   docker build -t kvcache .
#   docker run --rm -p 7171:7171 kvcache
#
# Without a Docker engine: tools/docker-build.sh (podman, local base images).
# Configuration is by KVCACHE_* environment variables or flags appended to
# `docker run kvcache ...` (see docs/operations.md).

############################ build stage ############################
FROM debian:bookworm AS build

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      meson ninja-build pkg-config cmake g++ \
      libevent-dev libsimdjson-dev libfmt-dev libabsl-dev doctest-dev libisal-dev libdeflate-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The context is filtered by .dockerignore (no .git, no build directories).
COPY . .

# Release build; only the unit suite runs here (the e2e suite needs python
# test dependencies that have no place in the image, so it is not registered).
RUN meson setup build --buildtype=release -De2e=false \
 && ninja -C build \
 && meson test -C build --suite unit --print-errorlogs \
 && install -D -m 0755 -s build/kvcache /out/kvcache

############################ runtime stage ##########################
FROM debian:bookworm-slim AS runtime

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libevent-core-2.1-7 \
      libsimdjson14 libfmt9 libabsl20220623 libisal2 libdeflate0 libssl3 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 10001 kvcache \
 && useradd --system --uid 10001 --gid kvcache --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin kvcache \
 && install -d -o 10001 -g 10001 -m 0700 /data

COPY --from=build /out/kvcache /usr/local/bin/kvcache

# Fail the build if a runtime library is missing from the list above.
RUN if ldd /usr/local/bin/kvcache | grep 'not found'; then exit 1; fi

# Snapshots: docker run -v kvcache-data:/data -e KVCACHE_SNAPSHOT_PATH=/data/cache.snap
# TLS: mount the certificate and key read-only (readable by uid 10001) and
# name them; the listener then speaks TLS only, and so does the HEALTHCHECK:
#   docker run -p 7171:7171 -v /srv/kvcache/tls:/tls:ro \
#     -e KVCACHE_TLS_CERT=/tls/cert.pem -e KVCACHE_TLS_KEY=/tls/key.pem kvcache
# (KVCACHE_TLS_CLIENT_CA=/tls/ca.pem for mutual TLS; `docker kill -s HUP`
# reloads them; see docs/operations.md, "TLS").
VOLUME /data
USER 10001:10001
ENV KVCACHE_PORT=7171 \
    KVCACHE_BIND=0.0.0.0
EXPOSE 7171
# docker stop waits 10 s by default: give it --drain-timeout plus
# --snapshot-timeout (docker stop -t 40, or --stop-timeout 40 on docker run).
STOPSIGNAL SIGTERM
# --health-check queries 127.0.0.1:$KVCACHE_PORT/health (the slim image has
# no curl), over TLS when KVCACHE_TLS_CERT is set; exit 0 on 200, else 1. Change the port with KVCACHE_PORT, not
# with a --port argument, so the health check follows it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/kvcache", "--health-check"]
ENTRYPOINT ["/usr/local/bin/kvcache"]
