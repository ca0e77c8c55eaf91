#!/usr/bin/env bash
# Starts and stops the platform's services on the native stack (each on its default ports).
#
#   infra/local/services.sh up     start every service binary (built by `cargo build`), wait for health
#   infra/local/services.sh down   SIGTERM each (graceful drain), SIGKILL after 15 s
#
# SHOP_ENV_PREFIX=bench_ runs them as a scratch environment of their own on the same stores:
# databases bench_<service>, MongoDB bench_catalog, index bench_products, ClickHouse
# bench_analytics, topics and Redis keys prefixed bench_ (`shopctl drop-env --prefix bench_`
# deletes it all); no checker then (it reads the platform's own stores).
#
# Logs: .stack/logs/<service>.log (JSON lines). Pids: .stack/run/<service>.pid.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STACK_DIR="${SHOP_STACK_DIR:-$REPO/.stack}"
BIN_DIR="${SHOP_BIN_DIR:-$REPO/target/debug}"
SERVICES=(order:50051 payment:50052 inventory:50053 shipping:50054 catalog:50055 cart:50056 analytics:50057)

log() { printf '[services] %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Running, and not a zombie: a SIGKILLed service stays a zombie until reaped (kill -0 succeeds
# on one), and would otherwise be taken for alive and not started again.
alive() { kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]; }

up() {
  mkdir -p "$STACK_DIR/logs" "$STACK_DIR/run"
  for spec in "${SERVICES[@]}"; do
    local name=${spec%%:*} port=${spec##*:}
    local pidfile="$STACK_DIR/run/$name.pid"
    if [ -s "$pidfile" ] && alive "$(cat "$pidfile")"; then continue; fi
    port_open "$port" && { log "port $port is taken by something else; $name cannot start"; exit 1; }
    if [ -n "${SHOP_ENV_PREFIX:-}" ]; then
      local p=$SHOP_ENV_PREFIX
      SHOP__DATABASE__URL="postgres://shop:shop@127.0.0.1:5432/${p}${name}" \
      SHOP__MONGO__DATABASE="${p}catalog" SHOP__SEARCH__INDEX="${p}products" \
      SHOP__CLICKHOUSE__DATABASE="${p}analytics" SHOP__KAFKA__TOPIC_PREFIX="$p" \
        nohup "$BIN_DIR/shop-$name" >>"$STACK_DIR/logs/$name.log" 2>&1 &
    else
      nohup "$BIN_DIR/shop-$name" >>"$STACK_DIR/logs/$name.log" 2>&1 &
    fi
    echo $! > "$pidfile"
  done
  local deadline=$((SECONDS + 60))
  for spec in "${SERVICES[@]}"; do
    local name=${spec%%:*} port=${spec##*:}
    until port_open "$port"; do
      if ! alive "$(cat "$STACK_DIR/run/$name.pid")" || ((SECONDS > deadline)); then
        log "$name did not start; last log lines:"; tail -n 20 "$STACK_DIR/logs/$name.log" >&2; exit 1
      fi
      sleep 0.2
    done
  done
  log "all ${#SERVICES[@]} services listening"
  [ -n "${SHOP_ENV_PREFIX:-}" ] && return 0
  # The continuous consistency check: every SHOP_CHECK_EVERY seconds (default 300), metrics on 9108.
  local pidfile="$STACK_DIR/run/checker.pid"
  if ! { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
    nohup "$BIN_DIR/shopctl" check --every "${SHOP_CHECK_EVERY:-300}" --metrics-port 9108 \
      >>"$STACK_DIR/logs/checker.log" 2>&1 &
    echo $! > "$pidfile"
  fi
}

down() {
  if [ -s "$STACK_DIR/run/checker.pid" ]; then
    kill -TERM "$(cat "$STACK_DIR/run/checker.pid")" 2>/dev/null || true
    rm -f "$STACK_DIR/run/checker.pid"
  fi
  for spec in "${SERVICES[@]}"; do
    local name=${spec%%:*}
    local pidfile="$STACK_DIR/run/$name.pid"
    [ -s "$pidfile" ] || continue
    local pid; pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
  done
  for spec in "${SERVICES[@]}"; do
    local name=${spec%%:*}
    local pidfile="$STACK_DIR/run/$name.pid"
    [ -s "$pidfile" ] || continue
    local pid; pid=$(cat "$pidfile")
    for _ in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
  log "services stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
