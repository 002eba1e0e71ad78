#!/usr/bin/env bash
# `make compose-up` / `make compose-down`: docker-compose.yml on a machine like this one, where
# no image registry is reachable. `up` starts Docker if needed, writes .env from .env.example
# on first use (a random POSTGRES_PASSWORD; GRADLAB_DATA_DIR, which the Makefile sets to
# ../shared/data/cifar100 where it exists, as the host's data folder), builds the four images locally (reused when
# nothing changed), starts the stack with the GPU worker where nvidia-smi sees a GPU (else
# the CPU one) and waits until the API answers. `down` removes the containers and the
# network; the database volume stays (`docker-compose down --volumes` deletes it).
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v docker-compose >/dev/null; then compose=(docker-compose); else compose=(docker compose); fi

case "${1:-}" in
  up)
    bash scripts/ensure_docker.sh
    if [ ! -f .env ]; then
      password="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
      sed -e "s|^POSTGRES_PASSWORD=.*|POSTGRES_PASSWORD=${password}|" \
          -e "s|^GRADLAB_HOST_DATA_DIR=.*|GRADLAB_HOST_DATA_DIR=${GRADLAB_DATA_DIR:-./data}|" \
          .env.example > .env
      echo "wrote .env (edit it to change settings; a random POSTGRES_PASSWORD)"
    fi
    eval "$(python3 scripts/build_images.py --env --prune)"
    profile=cpu
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then profile=gpu; fi
    "${compose[@]}" --profile "$profile" up --detach --no-build
    port="$(sed -n 's/^GRADLAB_API_PORT=//p' .env)"
    port="${port:-8000}"
    ready="import urllib.request; urllib.request.urlopen('http://127.0.0.1:${port}/readyz', timeout=5)"
    for _ in $(seq 120); do
      python3 -c "$ready" 2>/dev/null && break
      sleep 2
    done
    python3 -c "$ready" || { "${compose[@]}" logs --tail 50; exit 1; }
    echo "gradlab is up ($profile worker): http://localhost:${port}/docs"
    echo "first admin token: ${compose[*]} exec api gradlab token create --user NAME --admin"
    ;;
  down)
    env_file=.env
    [ -f .env ] || env_file=.env.example
    "${compose[@]}" --env-file "$env_file" --profile gpu --profile cpu down --remove-orphans
    ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
