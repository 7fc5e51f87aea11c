#!/usr/bin/env bash
# Installs and starts a private docker engine and makes the registry-free base image; `down` stops it.
#
# Usage:
#   eval "$(.ci/docker.sh up)"   # prints `export DOCKER_HOST=... MNISTKIT_BASE_IMAGE=... MNISTKIT_PIP_CERT=...`
#   .ci/docker.sh down [--purge] # stops dockerd by its pid file; --purge also deletes images and layers
#   .ci/docker.sh env            # prints the exports without starting anything
#
# Idempotent: an engine that already answers on the socket is reused, and the
# base image is only made when it is missing. Runs as root on Debian 12.
# No registry is reachable from CI machines, so the base image is made with
# debootstrap from the host's Debian mirror and `docker import`, and the host's
# extra CA certificates (the TLS-inspecting proxy) are trusted inside it so
# that pip can reach the package index during `docker build`.
set -euo pipefail

DIR="${MNISTKIT_DOCKER_DIR:-/tmp/mnistkit-docker}"
SOCK="$DIR/docker.sock"
BASE_IMAGE="${MNISTKIT_BASE_IMAGE:-localhost/mnistkit-base:bookworm}"
SUITE=bookworm

log() { echo "docker.sh: $*" >&2; }

docker_() { docker --host "unix://$SOCK" "$@"; }

engine_answers() { [ -S "$SOCK" ] && docker_ version >/dev/null 2>&1; }

print_env() {
  echo "export DOCKER_HOST=unix://$SOCK"
  echo "export MNISTKIT_BASE_IMAGE=$BASE_IMAGE"
  # The base trusts the host's CA certificates system-wide; pip in `docker build` must use that bundle.
  echo "export MNISTKIT_PIP_CERT=/etc/ssl/certs/ca-certificates.crt"
}

install_packages() {
  if command -v dockerd >/dev/null && command -v debootstrap >/dev/null; then
    return
  fi
  log "installing docker.io and debootstrap with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends docker.io debootstrap iptables >&2
}

start_engine() {
  if engine_answers; then
    log "reusing the engine on $SOCK"
    return
  fi
  mkdir -p "$DIR/data" "$DIR/exec"
  # A stale pid file or socket from a killed engine would make dockerd refuse to start.
  rm -f "$DIR/dockerd.pid" "$SOCK"
  log "starting dockerd (data in $DIR/data, log in $DIR/dockerd.log)"
  # setsid: the engine outlives this script and ignores the caller's Ctrl-C.
  setsid dockerd --host "unix://$SOCK" --data-root "$DIR/data" --exec-root "$DIR/exec" \
    --pidfile "$DIR/dockerd.pid" >"$DIR/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 120); do
    if engine_answers; then
      return
    fi
    sleep 0.5
  done
  log "dockerd did not answer on $SOCK within 60 s; its log:"
  tail -n 30 "$DIR/dockerd.log" >&2
  exit 1
}

debian_mirror() {
  # The first URIs line of the host's deb822 sources: the mirror apt already reaches.
  local uri
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

make_base_image() {
  if docker_ image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE exists"
    return
  fi
  local rootfs="$DIR/rootfs"
  rm -rf "$rootfs"
  log "debootstrap $SUITE from $(debian_mirror) into $rootfs"
  debootstrap --variant=minbase --include=ca-certificates,python3,python3-venv \
    "$SUITE" "$rootfs" "$(debian_mirror)" >"$DIR/debootstrap.log" 2>&1 \
    || { tail -n 30 "$DIR/debootstrap.log" >&2; exit 1; }
  shopt -s nullglob
  local certs=(/usr/local/share/ca-certificates/*.crt)
  if [ ${#certs[@]} -gt 0 ]; then
    cp "${certs[@]}" "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >&2
  fi
  # Keep the image small: apt lists and caches are not needed at run time.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" -c . \
    | docker_ import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >&2
  rm -rf "$rootfs"
  log "made $BASE_IMAGE"
}

stop_engine() {
  local pid
  if [ -f "$DIR/dockerd.pid" ]; then
    pid=$(cat "$DIR/dockerd.pid")
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping dockerd ($pid)"
      kill "$pid"
      for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
      done
      if kill -0 "$pid" 2>/dev/null; then
        log "dockerd ($pid) ignored SIGTERM for 30 s; killing it"
        kill -9 "$pid"
      fi
    fi
    rm -f "$DIR/dockerd.pid"
  fi
  rm -f "$SOCK"
}

case "${1:-}" in
  up)
    if [ "$(id -u)" != 0 ]; then
      log "must run as root (apt-get, dockerd, debootstrap)"
      exit 1
    fi
    install_packages
    start_engine
    make_base_image
    print_env
    ;;
  down)
    stop_engine
    if [ "${2:-}" = "--purge" ]; then
      rm -rf "$DIR"
    fi
    ;;
  env)
    print_env
    ;;
  *)
    echo "usage: $0 up | down [--purge] | env" >&2
    exit 2
    ;;
esac
