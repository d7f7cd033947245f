#!/usr/bin/env bash
# Builds the image from packaging/docker/Dockerfile and starts it, without a Docker engine:
# podman with runc and vfs storage in a temp dir that is deleted afterwards. Nothing can be
# pulled here, so the base images the Dockerfile names are made locally: debian:bookworm-slim
# by debootstrap, and a stand-in for rust:1-slim-bookworm with Debian's rustc-web.
#   sudo packaging/docker/ci-build.sh
# Needs: podman buildah runc debootstrap.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /var/tmp/mirror-podman.XXXXXX)
export CONTAINERS_CONF="$work/containers.conf" CONTAINERS_STORAGE_CONF="$work/storage.conf"
cleanup() {
  podman rm -f mirror-ci >/dev/null 2>&1 || true
  podman system reset -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
cat > "$CONTAINERS_CONF" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "none"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
cat > "$CONTAINERS_STORAGE_CONF" <<CONF
[storage]
driver = "vfs"
graphroot = "$work/graph"
runroot = "$work/run"
CONF
mirror=http://deb.debian.org/debian
debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; exit 1; }
echo "deb http://deb.debian.org/debian-security bookworm-security main" >> "$work/rootfs/etc/apt/sources.list"
tar -C "$work/rootfs" -c . | podman import - localhost/debian:bookworm-slim >/dev/null
podman tag localhost/debian:bookworm-slim docker.io/library/debian:bookworm-slim
# The stand-in carries this machine's extra CA certificates (a TLS-inspecting egress proxy
# here), so that cargo inside the build can reach crates.io as the host does.
mkdir -p "$work/rust/ca"
touch "$work/rust/ca/.keep"
cp /usr/local/share/ca-certificates/*.crt "$work/rust/ca/" 2>/dev/null || true
cat > "$work/rust/Containerfile" <<'FILE'
FROM docker.io/library/debian:bookworm-slim
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \
    && apt-get install -y --no-install-recommends rustc-web cargo-web gcc libc6-dev binutils ca-certificates \
    && update-ca-certificates \
    && rm -rf /var/lib/apt/lists/*
FILE
podman build -q --pull=never --network=host -t docker.io/library/rust:1-slim-bookworm "$work/rust" >/dev/null
# Docker's image format: OCI images have no HEALTHCHECK.
podman build --format docker --pull=never --network=host -t mirror-agent:ci -f "$repo/packaging/docker/Dockerfile" "$repo"
podman image ls mirror-agent:ci
podman run -d --name mirror-ci mirror-agent:ci >/dev/null
# The health check asks the agent over its control socket: wait for it to answer.
for _ in $(seq 1 60); do
  if podman exec mirror-ci mirror-agent status --state-dir /data/state >/dev/null 2>&1; then break; fi
  sleep 1
done
podman exec mirror-ci mirror-agent status --state-dir /data/state
podman healthcheck run mirror-ci
echo "health check: healthy"
test "$(podman exec mirror-ci id -u)" = 10001
podman exec mirror-ci mirror-agent id --state-dir /data/state
podman logs mirror-ci 2>&1 | tail -5
echo "image built and started"
