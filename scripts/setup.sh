#!/usr/bin/env bash
# Install and start what greenroom needs, idempotently: check first, act only when missing.
# Usage: scripts/setup.sh [packages|docker|base|chatbot|venv ...]   (no args: all steps)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_IMAGE="greenroom/base:bookworm"
CHATBOT_IMAGE="greenroom/chatbot:latest"
CHATBOT_DIR="$REPO/images/chatbot"
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
  DEBIAN_FRONTEND=noninteractive quiet apt-get install -y --no-install-recommends "$@"
}

step_packages() {
  local t=$SECONDS missing=() cmd pkg
  for pair in docker:docker.io dockerd:docker.io redis-server:redis-server mmdebstrap:mmdebstrap; do
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
  # --live-restore: containers keep running while the daemon restarts (greenroom adopts them)
  setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false --ip-forward=false --live-restore \
    >>"$DOCKERD_LOG" 2>&1 </dev/null &
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

main() {
  local steps=("$@")
  [ "${#steps[@]}" -gt 0 ] || steps=(packages docker base chatbot venv)
  for s in "${steps[@]}"; do
    case "$s" in
      packages|docker|base|chatbot|venv) "step_$s" ;;
      *) die "unknown step '$s' (packages|docker|base|chatbot|venv)" ;;
    esac
  done
}

main "$@"
