#!/usr/bin/env bash
# Docker for tests/deploy and `make compose-up`: install Debian's docker.io, docker-compose and
# debootstrap when missing (root only), and start dockerd when it is down. Safe to run when all
# is there. Never fails: where Docker cannot run, the docker tests say so and skip.
set -uo pipefail

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 \
  || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})) && [ "$(id -u)" = 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -q -o DPkg::Lock::Timeout=300 >/dev/null \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 \
      "${missing[@]}" >/dev/null \
    || echo "could not install ${missing[*]}"
fi

if ! docker info >/dev/null 2>&1 && command -v dockerd >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "starting dockerd (log: /var/log/dockerd.log)"
  setsid nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi

if docker info >/dev/null 2>&1; then
  echo "docker $(docker info --format '{{.ServerVersion}}') is running"
else
  echo "docker cannot run here; tests/deploy's container tests will be skipped"
fi
exit 0
