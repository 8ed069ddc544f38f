#!/usr/bin/env bash
# Installs everything paychan needs into ./.venv and ./node_modules, and makes sure a Redis
# server answers on 127.0.0.1:6379. Safe to run again: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
step() { printf '\n==> %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi

# torch first and pinned: on these machines 2.14.1/0.29.1 come from local disk; an unpinned
# torch would pull a multi-GB build from the index.
if ! .venv/bin/python -c 'import torch, torchvision' 2>/dev/null; then
  step "installing torch 2.14.1 and torchvision 0.29.1"
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
fi

stamp=.venv/.stamp-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  step "installing paychan and its test dependencies"
  .venv/bin/pip install -q -e '.[test]'
  rm -f .venv/.stamp-*; touch "$stamp"
fi

if [ ! -x node_modules/.bin/anvil ] || [ ! -d node_modules/solc ]; then
  step "installing solc, OpenZeppelin and anvil from npm"
  npm ci --no-audit --no-fund --loglevel=error
fi

# The console's browser test (tests/gateway/test_console.py) drives the system Chromium through
# its chromedriver; nothing downloads a browser. Without apt it is skipped, saying why.
if ! command -v chromedriver >/dev/null || ! { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then
  if command -v apt-get >/dev/null; then
    step "installing chromium and chromium-driver (the console's browser test)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
      || echo "warning: chromium could not be installed; the console's browser test will be skipped" >&2
  else
    echo "note: no apt-get here: install Chromium and chromedriver to run the console's browser test" >&2
  fi
fi

redis_up() { .venv/bin/python - <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", 6379), timeout=1); s.sendall(b"PING\r\n")
    sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}
if ! redis_up; then
  if ! command -v redis-server >/dev/null; then
    step "installing redis-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
  fi
  step "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 20); do redis_up && break; sleep 0.25; done
  redis_up || { echo "redis-server did not answer on 127.0.0.1:6379" >&2; exit 1; }
fi
step "setup complete"
