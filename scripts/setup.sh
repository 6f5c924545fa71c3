#!/usr/bin/env bash
# Install and start what greenroom needs, idempotently: check first, act only when missing.
# Usage: scripts/setup.sh [packages|docker|base|chatbot|venv|wheelhouse|redis ...]   (no args: all)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="greenroom/base:bookworm"
CHATBOT_IMAGE="greenroom/chatbot:latest"
CHATBOT_DIR="$REPO/images/chatbot"
REDIS_IMAGE="greenroom/redis:bookworm"  # docker-compose.yml's Redis where redis:7 cannot be pulled
WHEELHOUSE="$REPO/deploy/wheelhouse"
DOCKERD_LOG="/var/log/greenroom-dockerd.log"
VENV="$REPO/.venv"
STAMP="$VENV/.greenroom-stamp"
APT_UPDATED=0
CLEANUP=""
trap 'if [ -n "$CLEANUP" ]; then rm -rf "$CLEANUP"; fi' EXIT

say() { echo "setup: $*"; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }
took() { echo "($((SECONDS - $1))s)"; }

# Run a command quietly; show its output only if it fails.
quiet() {
  local log rc=0
  log="$(mktemp)"
  "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then cat "$log" >&2; fi
  rm -f "$log"
  return "$rc"
}

apt_install() {
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    die "missing packages; install them as root: apt-get install -y $*"
  fi
  if [ "$APT_UPDATED" -eq 0 ]; then quiet apt-get update; APT_UPDATED=1; fi
  # No package's service starts on install (prometheus's would listen on :9090): a
  # policy-rc.d that refuses, for the install only, unless the machine has one already.
  local policy=/usr/sbin/policy-rc.d made=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; made=1; fi
  DEBIAN_FRONTEND=noninteractive quiet apt-get install -y --no-install-recommends "$@" || { [ "$made" -eq 0 ] || rm -f "$policy"; return 1; }
  [ "$made" -eq 0 ] || rm -f "$policy"
}

step_packages() {
  local t=$SECONDS missing=() cmd pkg
  # chromium + chromedriver: the pool page's browser test; prometheus + promtool: the alert rules' tests
  for pair in docker:docker.io dockerd:docker.io redis-server:redis-server mmdebstrap:mmdebstrap \
      docker-compose:docker-compose chromium:chromium chromedriver:chromium-driver \
      prometheus:prometheus promtool:prometheus; do
    cmd="${pair%%:*}" pkg="${pair#*:}"
    command -v "$cmd" >/dev/null || missing+=("$pkg")
  done
  python3 -m ensurepip --version >/dev/null 2>&1 || missing+=(python3-venv)
  if [ "${#missing[@]}" -eq 0 ]; then say "packages ... present"; return; fi
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  apt_install "${missing[@]}"
  say "packages ... installed ${missing[*]} $(took "$t")"
}

docker_ok() { timeout 10 docker info >/dev/null 2>&1; }

step_docker() {
  local t=$SECONDS
  if docker_ok; then say "docker engine ... running"; return; fi
  case "${DOCKER_HOST:-unix:///var/run/docker.sock}" in
    unix:///var/run/docker.sock|unix:///run/docker.sock) ;;
    *) die "DOCKER_HOST=$DOCKER_HOST is not reachable (not starting a local engine)" ;;
  esac
  [ "$(id -u)" -eq 0 ] || die "no Docker engine reachable and not root: start dockerd yourself"
  # --live-restore: containers keep running while the daemon restarts (greenroom adopts them).
  # Started from / so that it outlives this checkout (tests restart it in its own directory).
  (cd / && exec setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false --ip-forward=false \
    --live-restore >>"$DOCKERD_LOG" 2>&1 </dev/null) &
  for _ in $(seq 60); do
    if docker_ok; then say "docker engine ... started $(took "$t")"; return; fi
    sleep 1
  done
  tail -n 20 "$DOCKERD_LOG" >&2 || true
  die "dockerd did not answer within 60 s (log: $DOCKERD_LOG)"
}

step_base() {
  local t=$SECONDS tmp
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE ... present"; return
  fi
  tmp="$(mktemp -d /var/tmp/greenroom-base.XXXXXX)"
  CLEANUP="$tmp"
  quiet mmdebstrap --quiet --variant=minbase --include=python3 bookworm "$tmp/base.tar"
  quiet docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    "$tmp/base.tar" "$BASE_IMAGE"
  rm -rf "$tmp"; CLEANUP=""
  say "base image $BASE_IMAGE ... built $(took "$t")"
}

# sha256 over the sorted files of images/chatbot (path and content), caches excluded.
chatbot_hash() {
  (cd "$CHATBOT_DIR" && find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-64
}

step_chatbot() {
  local t=$SECONDS want have
  [ -f "$CHATBOT_DIR/Dockerfile" ] || die "$CHATBOT_DIR/Dockerfile is missing"
  want="$(chatbot_hash)"
  have="$(docker image inspect -f '{{ index .Config.Labels "greenroom.source-hash" }}' \
    "$CHATBOT_IMAGE" 2>/dev/null || true)"
  if [ "$have" = "$want" ]; then say "image $CHATBOT_IMAGE ... up to date"; return; fi
  local buildkit=1
  docker buildx version >/dev/null 2>&1 || buildkit=0
  quiet env DOCKER_BUILDKIT="$buildkit" docker build --network none \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --label "greenroom.source-hash=$want" \
    -t "$CHATBOT_IMAGE" "$CHATBOT_DIR"
  say "image $CHATBOT_IMAGE ... built $(took "$t")"
}

step_venv() {
  local t=$SECONDS want
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "python3 >= 3.11 needed, found $(python3 --version 2>&1)"
  [ -x "$VENV/bin/python" ] || quiet python3 -m venv "$VENV"
  want="$(sha256sum "$REPO/pyproject.toml" | cut -c1-64)"
  if [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then say "venv .venv ... up to date"; return; fi
  (cd "$REPO" && quiet "$VENV/bin/pip" install --disable-pip-version-check -e '.[test,bench]')
  echo "$want" >"$STAMP"
  say "venv .venv ... installed $(took "$t")"
}

# Wheels of the image's dependencies, pip and setuptools, for an offline image build
# (Dockerfile, INSTALL_FROM=wheelhouse); remade when the dependencies, the venv's Python or
# the base image change.
step_wheelhouse() {
  local t=$SECONDS reqs want base_py
  [ -x "$VENV/bin/pip" ] || die "the wheelhouse needs the venv: scripts/setup.sh venv wheelhouse"
  reqs="$("$VENV/bin/python" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$REPO/pyproject.toml")"
  want="$({ echo "$reqs"; "$VENV/bin/python" -V; docker image inspect -f '{{.Id}}' "$BASE_IMAGE"; } \
    | sha256sum | cut -c1-64)"
  if [ "$(cat "$WHEELHOUSE/.stamp" 2>/dev/null)" = "$want" ]; then
    say "wheelhouse deploy/wheelhouse ... up to date"; return
  fi
  # The wheels are this Python's: the base image must run the same minor version.
  base_py="$(docker run --rm --network none "$BASE_IMAGE" python3 -c 'import sys; print(*sys.version_info[:2])')"
  [ "$base_py" = "$("$VENV/bin/python" -c 'import sys; print(*sys.version_info[:2])')" ] \
    || die "$BASE_IMAGE runs Python $base_py, not the venv's: the wheels would not fit"
  mkdir -p "$WHEELHOUSE"
  rm -f "$WHEELHOUSE"/*.whl "$WHEELHOUSE/.stamp"
  printf '%s\n' "$reqs" pip 'setuptools>=68' >"$WHEELHOUSE/requirements.txt"
  quiet "$VENV/bin/pip" wheel --disable-pip-version-check --wheel-dir "$WHEELHOUSE" \
    -r "$WHEELHOUSE/requirements.txt"
  wheelhouse_complete_for_base
  echo "$want" >"$WHEELHOUSE/.stamp"
  say "wheelhouse deploy/wheelhouse ... built $(took "$t")"
}

# pip on the host resolved with the host's Python; the image's may need more (environment
# markers: redis wants async-timeout below Python 3.11.3). Resolve again offline with the
# base image's Python and fetch what it misses, until it misses nothing.
wheelhouse_complete_for_base() {
  local out missing
  for _ in 1 2 3 4 5 6 7 8; do
    out="$(docker run --rm --network none -v "$WHEELHOUSE:/w:ro" "$BASE_IMAGE" sh -c \
      'set -- /w/pip-*.whl; python3 "$1/pip" download -q --no-index --find-links /w -d /tmp/x -r /w/requirements.txt' 2>&1)" \
      && return 0
    missing="$(sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' <<<"$out" | head -n 1)"
    [ -n "$missing" ] || { echo "$out" >&2; die "the wheelhouse does not install on $BASE_IMAGE"; }
    quiet "$VENV/bin/pip" wheel --disable-pip-version-check --no-deps --wheel-dir "$WHEELHOUSE" "$missing"
  done
  die "the wheelhouse still misses wheels for $BASE_IMAGE after 8 rounds"
}

# Redis for docker-compose.yml where redis:7 cannot be pulled: Debian's redis-server on a
# minbase, running as user redis with /data its own (as in the official image).
step_redis() {
  local t=$SECONDS tmp
  if docker image inspect "$REDIS_IMAGE" >/dev/null 2>&1; then
    say "redis image $REDIS_IMAGE ... present"; return
  fi
  tmp="$(mktemp -d /var/tmp/greenroom-redis.XXXXXX)"
  CLEANUP="$tmp"
  quiet mmdebstrap --quiet --variant=minbase --include=redis-server \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --customize-hook='mkdir -p "$1/data" && chroot "$1" chown redis:redis /data' \
    bookworm "$tmp/redis.tar"
  quiet docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'USER redis' --change 'WORKDIR /data' \
    --change 'EXPOSE 6379' --change 'CMD ["redis-server"]' \
    "$tmp/redis.tar" "$REDIS_IMAGE"
  rm -rf "$tmp"; CLEANUP=""
  say "redis image $REDIS_IMAGE ... built $(took "$t")"
}

main() {
  local steps=("$@")
  [ "${#steps[@]}" -gt 0 ] || steps=(packages docker base chatbot venv wheelhouse redis)
  for s in "${steps[@]}"; do
    case "$s" in
      packages|docker|base|chatbot|venv|wheelhouse|redis) "step_$s" ;;
      *) die "unknown step '$s' (packages|docker|base|chatbot|venv|wheelhouse|redis)" ;;
    esac
  done
}

main "$@"
