#!/usr/bin/env bash
# Build the kvcache container image with podman, on a host without a Docker
# engine and without registry access for base images.
#
#   tools/docker-build.sh              # base images (if missing) + image build
#   tools/docker-build.sh --base-only  # only create the local base images
#   tools/docker-build.sh --smoke      # build, then run the binary from the
#                                      # image (chroot) and exercise it
#
# Environment:
#   IMAGE=kvcache            name/tag of the image to build
#   DEBIAN_MIRROR=<url>      mirror for debootstrap (default: first URIs: entry
#                            of /etc/apt/sources.list.d/debian.sources, else
#                            http://deb.debian.org/debian)
#   ROOTFS_DIR=<dir>         where the minbase rootfs is created
#                            (default /var/tmp/kvcache-bookworm-rootfs)
#   SMOKE_PORT=17171         port used by --smoke
#
# The Dockerfile uses debian:bookworm (build stage) and debian:bookworm-slim
# (runtime stage). Both are provided locally from one debootstrap minbase
# rootfs: the build stage apt-installs whatever it needs, and minbase is the
# same package set as the official -slim image. Steps are idempotent: the
# rootfs and the imports are skipped when the images already exist.
#
# podman runs with --isolation=chroot (no OCI runtime/network namespace needed),
# --pull=never (base images are local) and --format docker (the OCI image
# format has no HEALTHCHECK; podman would drop it with a warning). `podman run` does not work in this
# environment, so --smoke mounts the image and runs the binary with chroot.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
IMAGE=${IMAGE:-kvcache}
ROOTFS_DIR=${ROOTFS_DIR:-/var/tmp/kvcache-bookworm-rootfs}
SMOKE_PORT=${SMOKE_PORT:-17171}
BASE_SLIM=docker.io/library/debian:bookworm-slim
BASE_FULL=docker.io/library/debian:bookworm

mode=build
case "${1:-}" in
  "") ;;
  --base-only) mode=base ;;
  --smoke) mode=smoke ;;
  -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
  *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

log() { printf '[docker-build] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "this script must run as root (debootstrap, rootful podman, chroot)" >&2
    exit 1
  fi
}

ensure_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      -o DPkg::Lock::Timeout=600 "${missing[@]}"
  fi
}

default_mirror() {
  local f=/etc/apt/sources.list.d/debian.sources uri=""
  if [ -r "$f" ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' "$f")
  fi
  if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

image_exists() { podman image exists "$1"; }

ensure_base_images() {
  if image_exists "$BASE_SLIM" && image_exists "$BASE_FULL"; then
    log "base images present: $BASE_SLIM, $BASE_FULL"
    return
  fi
  local mirror=${DEBIAN_MIRROR:-$(default_mirror)}
  if [ ! -x "$ROOTFS_DIR/usr/bin/apt-get" ] || [ ! -f "$ROOTFS_DIR/.kvcache-rootfs-complete" ]; then
    log "debootstrap --variant=minbase bookworm $ROOTFS_DIR $mirror"
    rm -rf "$ROOTFS_DIR"
    debootstrap --variant=minbase bookworm "$ROOTFS_DIR" "$mirror"
    # Same trimming as the official -slim image (debuerreotype --slim): dpkg
    # does not install docs/man pages/locales, and the ones present are removed.
    cat >"$ROOTFS_DIR/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
    cat >"$ROOTFS_DIR/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$ROOTFS_DIR/etc/apt/apt.conf.d/docker-no-languages"
    find "$ROOTFS_DIR/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$ROOTFS_DIR/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$ROOTFS_DIR"/usr/share/{groff,info,linda,lintian/overrides,locale,man}/*
    rm -rf "$ROOTFS_DIR"/var/lib/apt/lists/* "$ROOTFS_DIR"/var/cache/apt/*.bin \
           "$ROOTFS_DIR"/var/cache/apt/archives/*.deb "$ROOTFS_DIR"/var/log/*.log \
           "$ROOTFS_DIR"/var/log/apt/*
    # Point apt inside the image at the same mirror (+ security updates when
    # the mirror is deb.debian.org).
    cat >"$ROOTFS_DIR/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
EOF
    if [ "$mirror" = "http://deb.debian.org/debian" ]; then
      echo "deb http://deb.debian.org/debian-security bookworm-security main" \
        >>"$ROOTFS_DIR/etc/apt/sources.list"
    fi
    touch "$ROOTFS_DIR/.kvcache-rootfs-complete"
  else
    log "reusing rootfs $ROOTFS_DIR"
  fi
  if ! image_exists "$BASE_SLIM"; then
    log "importing $BASE_SLIM"
    tar -C "$ROOTFS_DIR" --exclude=./.kvcache-rootfs-complete -c . \
      | podman import --change 'CMD ["bash"]' - "$BASE_SLIM"
  fi
  if ! image_exists "$BASE_FULL"; then
    log "tagging $BASE_FULL (same minbase rootfs; the build stage installs its own packages)"
    podman tag "$BASE_SLIM" "$BASE_FULL"
  fi
}

build_image() {
  log "podman build -t $IMAGE $repo"
  podman build --isolation=chroot --pull=never --format docker -t "$IMAGE" -f "$repo/Dockerfile" "$repo"
  podman images "$IMAGE"
}

smoke() {
  local mnt pid user rc=0 base="http://127.0.0.1:$SMOKE_PORT"
  command -v curl >/dev/null || { echo "--smoke needs curl" >&2; exit 1; }
  mnt=$(podman image mount "$IMAGE")
  log "image mounted at $mnt"
  # Run as the image's USER (the chroot does not apply the image config).
  user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
  chroot --userspec="${user:-10001:10001}" "$mnt" /usr/local/bin/kvcache \
    --port "$SMOKE_PORT" --bind 127.0.0.1 --threads 2 --memory-limit 64M &
  pid=$!
  trap 'kill -TERM $pid 2>/dev/null || true; podman image unmount "$IMAGE" >/dev/null || true' EXIT
  for _ in $(seq 1 50); do
    curl -fsS "$base/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  set -x
  curl -fsS "$base/health"; echo
  curl -fsS -X POST -d '{"key":"smoke","value":"ok"}' "$base/put"; echo
  curl -fsS "$base/get?key=smoke"; echo
  chroot --userspec="${user:-10001:10001}" "$mnt" /usr/local/bin/kvcache --health-check --port "$SMOKE_PORT"
  set +x
  log "health-check exit code: 0"
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  log "server exit code after SIGTERM: $rc"
  trap - EXIT
  podman image unmount "$IMAGE" >/dev/null
  [ "$rc" -eq 0 ]
}

need_root
ensure_tools
ensure_base_images
[ "$mode" = base ] && exit 0
build_image
[ "$mode" = smoke ] && smoke
exit 0
