#!/usr/bin/env bash
# The native stack: every store the platform needs, on loopback, without Docker.
#
#   infra/local/stack.sh up [COMPONENT...]   install what is missing, start, wait until each answers
#   infra/local/stack.sh down                stop what this script started
#   infra/local/stack.sh status              what answers, and who owns it
#   infra/local/stack.sh install             install only (apt, Maven, Go, pip), start nothing
#   infra/local/stack.sh reset [COMPONENT...] stop, and delete that data (fresh stores on next up)
#
# Components: postgres redis kafka clickhouse mongo search (default: all).
# Idempotent: a store already answering on its port is used as it is (and left running by
# `down`). Data, logs and pid files live under $SHOP_STACK_DIR (default: <repo>/.stack).
# Downloads and builds are cached under $SHOP_CACHE_DIR (default: ~/.cache/shop), keyed by version.
#
# Ports (the same as docker-compose.yml, so services never know which stack they are on):
#   postgres 5432 (user shop/shop) | redis 6379 | kafka 9092 (Apache Kafka, controller on 9093)
#   clickhouse 8123 http, 9000 native | mongo 27017 (FerretDB) | search 9200 (OpenSearch, transport 9300)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STACK_DIR="${SHOP_STACK_DIR:-$REPO/.stack}"
CACHE_DIR="${SHOP_CACHE_DIR:-$HOME/.cache/shop}"
LOG_DIR="$STACK_DIR/logs"
RUN_DIR="$STACK_DIR/run"

KAFKA_VERSION=4.1.1
KAFKA_LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
OPENSEARCH_VERSION=2.19.6
SEARCH_LIBS="$CACHE_DIR/opensearch-$OPENSEARCH_VERSION/libs"
FERRETDB_VERSION=$(awk '$1 == "require" && $2 == "github.com/FerretDB/FerretDB" {print $3}' "$REPO/infra/local/mongo/go.mod")  # pinned in go.mod
# The launcher's build is keyed by FerretDB's version and the launcher's own sources.
FERRETDB_BIN="$CACHE_DIR/ferretdb-$FERRETDB_VERSION/ferretdb-$(cat "$REPO/infra/local/mongo/main.go" "$REPO/infra/local/mongo/go.sum" | md5sum | cut -c1-12)"
NX_VERSION=0.8.1
NX_VENV="$CACHE_DIR/venv-nx27017-$NX_VERSION"
PG_MAJOR=15
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"

ALL=(postgres redis kafka clickhouse mongo search)

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Fails for good (not just "not yet") when the process is gone, so wait_for stops early.
running_and() { # pidfile command...: the command's status while the process lives, else 2
  kill -0 "$(cat "$1")" 2>/dev/null || return 2
  shift; "$@"
}

wait_for() { # name timeout_s command...
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  local rc
  while true; do
    rc=0; "$@" >/dev/null 2>&1 || rc=$?
    ((rc == 0)) && return 0
    if ((rc == 2 || SECONDS >= deadline)); then
      log "$name did not answer within ${timeout}s; last log lines:"
      tail -n 30 "$LOG_DIR/$name.log" 2>/dev/null >&2 || true
      return 1
    fi
    sleep 0.3
  done
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

APT_UPDATED=0
apt_install() { # packages...
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  if [ $APT_UPDATED = 0 ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  # policy-rc.d 101: packages must not start their own daemons; this script starts them.
  as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

started_here() { echo "$1" >> "$RUN_DIR/started"; }

# ---------------------------------------------------------------- postgres
# The cluster runs as the `postgres` user, which must reach its data, socket and log. When the
# checkout is somewhere it cannot traverse (e.g. a mode-700 temp dir), they live in a directory of
# its own under /var/tmp instead, named after the checkout.
PG_HOME="$STACK_DIR/postgres-home"
pg_home() {
  if id postgres >/dev/null 2>&1 && ! runuser -u postgres -- test -x "$STACK_DIR" 2>/dev/null; then
    PG_HOME="/var/tmp/shop-postgres-$(printf '%s' "$REPO" | md5sum | cut -c1-12)"
  fi
  mkdir -p "$PG_HOME"
  chown postgres:postgres "$PG_HOME" 2>/dev/null || true
}

install_postgres() {
  [ -x "$PG_BIN/postgres" ] || apt_install "postgresql-$PG_MAJOR"
  [ -x "$PG_BIN/pgbench" ] || apt_install "postgresql-contrib"  2>/dev/null || true
}

ensure_shop_role() {
  if PGPASSWORD=shop "$PG_BIN/psql" -h 127.0.0.1 -U shop -d postgres -Atqc 'select 1' >/dev/null 2>&1; then return 0; fi
  log "creating role shop on the existing PostgreSQL"
  local sql="DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='shop') THEN CREATE ROLE shop LOGIN SUPERUSER PASSWORD 'shop'; END IF; END\$\$;"
  runuser -u postgres -- "$PG_BIN/psql" -Atqc "$sql" >/dev/null 2>&1 \
    || "$PG_BIN/psql" -h 127.0.0.1 -U postgres -Atqc "$sql" >/dev/null 2>&1 \
    || die "PostgreSQL on 5432 does not accept shop/shop and I cannot create the role; create it: $sql"
}

up_postgres() {
  install_postgres
  if port_open 5432; then log "postgres: using the server already on 5432"; ensure_shop_role; return; fi
  pg_home
  local data="$PG_HOME/data"
  if [ ! -s "$data/PG_VERSION" ]; then
    log "postgres: initdb $data"
    mkdir -p "$data"; chown postgres:postgres "$data"; chmod 700 "$data"
    local pw; pw=$(mktemp); echo shop > "$pw"; chmod 644 "$pw"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$data" -U shop --pwfile="$pw" --auth=scram-sha-256 \
      --encoding=UTF8 --locale=C.UTF-8 >"$LOG_DIR/postgres-initdb.log" 2>&1 \
      || { cat "$LOG_DIR/postgres-initdb.log" >&2; rm -f "$pw"; die "initdb failed"; }
    rm -f "$pw"
    cat >> "$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = 5432
unix_socket_directories = '$PG_HOME'
max_connections = 400
shared_buffers = 512MB
CONF
  fi
  # max_prepared_transactions: two-phase commit (order's twopc coordinator, PREPARE TRANSACTION
  # in inventory, payment and shipping); on the command line, so an existing cluster gets it too.
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$data" -l "$PG_HOME/postgres.log" -w -t 60 \
    -o "-c max_prepared_transactions=64" start >/dev/null \
    || { tail -n 30 "$PG_HOME/postgres.log" >&2; die "postgres did not start"; }
  ln -sf "$PG_HOME/postgres.log" "$LOG_DIR/postgres.log"
  started_here postgres
  wait_for postgres 60 env PGPASSWORD=shop "$PG_BIN/psql" -h 127.0.0.1 -U shop -d postgres -Atqc 'select 1'
  log "postgres: up on 127.0.0.1:5432 (data $data)"
}

down_postgres() {
  pg_home
  [ -s "$PG_HOME/data/postmaster.pid" ] || return 0
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_HOME/data" -m fast -w stop >/dev/null || true
}

# ---------------------------------------------------------------- redis
up_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  if port_open 6379; then log "redis: using the server already on 6379"; return; fi
  mkdir -p "$STACK_DIR/redis"
  redis-server --bind 127.0.0.1 --port 6379 --dir "$STACK_DIR/redis" --daemonize yes \
    --pidfile "$RUN_DIR/redis.pid" --logfile "$LOG_DIR/redis.log" --appendonly yes --save ""
  started_here redis
  wait_for redis 20 redis-cli -p 6379 ping
  log "redis: up on 127.0.0.1:6379"
}

down_redis() { kill_pidfile "$RUN_DIR/redis.pid"; }

# ---------------------------------------------------------------- kafka (Apache Kafka, KRaft)
# The broker itself (kafka.Kafka), its jars fetched from Maven Central by infra/local/kafka/pom.xml
# (transitive copy-dependencies) into $KAFKA_LIBS, once per version. One node in KRaft combined
# mode (broker and controller in one JVM): client listener 9092, controller listener 9093.
install_java() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
}

maven_fetch() { # pom libs_dir -Dprop=value...
  local pom=$1 dir=$2; shift 2
  [ -f "$dir/.complete" ] && return 0
  log "fetching $(basename "$(dirname "$pom")") jars with Maven into $dir"
  rm -rf "$dir"; mkdir -p "$dir"
  mvn -q -B -Dstyle.color=never -f "$pom" "$@" -Dlibs.dir="$dir" dependency:copy-dependencies \
    >"$dir.mvn.log" 2>&1 \
    || { tail -n 30 "$dir.mvn.log" >&2; die "maven could not fetch $pom"; }
  touch "$dir/.complete"
}

install_kafka() {
  install_java
  maven_fetch "$REPO/infra/local/kafka/pom.xml" "$KAFKA_LIBS" -Dkafka.version="$KAFKA_VERSION"
}

# A modest heap: the broker's page cache is the OS's, not the JVM's. `exec`: the pid file names
# the JVM itself, so `down` stops the broker and not just a shell around it.
kafka_java() { # main-class args...
  exec java -Xms512m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dkafka.logs.dir="$LOG_DIR" -Dlog4j2.configurationFile="$REPO/infra/local/kafka/log4j2.yaml" \
    -cp "$KAFKA_LIBS/*" "$@"
}

write_kafka_config() {
  local dir=$STACK_DIR/kafka
  mkdir -p "$dir/data"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:9093
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093
advertised.listeners=PLAINTEXT://127.0.0.1:9092
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
# One node: every internal topic has one replica, and a transaction needs only that one.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# No wait for more members before the first rebalance (tests start and stop consumers often).
group.initial.rebalance.delay.ms=0
num.partitions=4
auto.create.topics.enable=false
log.retention.hours=24
log.segment.bytes=67108864
PROPS
}

up_kafka() {
  install_kafka
  if port_open 9092; then log "kafka: using the broker already on 9092"; return; fi
  write_kafka_config
  local dir=$STACK_DIR/kafka
  # Format once: the cluster id is kept beside the data; --ignore-formatted makes re-runs no-ops.
  [ -s "$dir/cluster.id" ] || (kafka_java kafka.tools.StorageTool random-uuid) > "$dir/cluster.id"
  (kafka_java kafka.tools.StorageTool format --standalone --ignore-formatted \
    -t "$(cat "$dir/cluster.id")" -c "$dir/server.properties") >"$LOG_DIR/kafka-format.log" 2>&1 \
    || { cat "$LOG_DIR/kafka-format.log" >&2; die "kafka storage format failed"; }
  (trap '' HUP; kafka_java kafka.Kafka "$dir/server.properties" >"$LOG_DIR/kafka.out" 2>&1) &
  echo $! > "$RUN_DIR/kafka.pid"
  started_here kafka
  # Tests that kill a broker of their own run these same jars (libs/messaging/tests/it/helpers.rs).
  ln -sfn "$KAFKA_LIBS" "$dir/libs"
  wait_for kafka 90 running_and "$RUN_DIR/kafka.pid" \
    python3 "$REPO/infra/local/kafka/await_metadata.py" 127.0.0.1 9092
  log "kafka: up on 127.0.0.1:9092 (Apache Kafka $KAFKA_VERSION, KRaft, data $dir/data)"
}

down_kafka() { kill_pidfile "$RUN_DIR/kafka.pid"; }

# ---------------------------------------------------------------- clickhouse
up_clickhouse() {
  [ -x /usr/sbin/clickhouse-server ] || apt_install clickhouse-server clickhouse-client
  if port_open 8123; then log "clickhouse: using the server already on 8123"; return; fi
  local dir="$STACK_DIR/clickhouse"
  mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas"
  cat > "$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>$LOG_DIR/clickhouse.log</log>
    <errorlog>$LOG_DIR/clickhouse.err.log</errorlog>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>8123</http_port>
  <tcp_port>9000</tcp_port>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <max_concurrent_queries>100</max_concurrent_queries>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
XML
  cat > "$dir/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
  nohup /usr/sbin/clickhouse-server --config-file="$dir/config.xml" >"$LOG_DIR/clickhouse.out" 2>&1 &
  echo $! > "$RUN_DIR/clickhouse.pid"
  started_here clickhouse
  wait_for clickhouse 60 curl -fsS http://127.0.0.1:8123/ping
  log "clickhouse: up on 127.0.0.1:8123 (http) / 9000 (native), version $(curl -fsS 'http://127.0.0.1:8123/?query=SELECT%20version()')"
}

down_clickhouse() { kill_pidfile "$RUN_DIR/clickhouse.pid"; }

# ---------------------------------------------------------------- mongo (FerretDB or nx-27017)
# The MongoDB wire protocol. Default: FerretDB $FERRETDB_VERSION on its PostgreSQL backend (the
# cluster above, database `ferretdb`), built from the Go module proxy as the small launcher in
# infra/local/mongo (FerretDB's own command, built from the proxy, panics at start in its
# build-version check; main.go says why). SHOP_MONGO_SERVER=nx27017 runs nx-27017 (PyPI,
# SQLite-backed) instead, for comparison.
MONGO_SERVER="${SHOP_MONGO_SERVER:-ferretdb}"

install_ferretdb() {
  [ -x "$FERRETDB_BIN" ] && return
  command -v go >/dev/null || apt_install golang-go
  log "mongo: building FerretDB $FERRETDB_VERSION into $FERRETDB_BIN (once, a few minutes)"
  mkdir -p "$(dirname "$FERRETDB_BIN")"
  (cd "$REPO/infra/local/mongo" && GOPATH="$CACHE_DIR/go" GOMODCACHE="$CACHE_DIR/go/mod" \
    go build -trimpath -o "$FERRETDB_BIN.tmp" .) \
    >"$CACHE_DIR/ferretdb-build.log" 2>&1 \
    || { tail -n 30 "$CACHE_DIR/ferretdb-build.log" >&2; die "FerretDB build failed"; }
  mv "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
}

install_nx27017() {
  [ -x "$NX_VENV/bin/nx-27017" ] && return
  log "mongo: installing nx-27017 $NX_VERSION into $NX_VENV"
  python3 -m venv "$NX_VENV" || { apt_install python3-venv; python3 -m venv "$NX_VENV"; }
  "$NX_VENV/bin/pip" install -q "nx-27017==$NX_VERSION"
}

install_mongo() {
  case $MONGO_SERVER in
    ferretdb) install_ferretdb ;;
    nx27017) install_nx27017 ;;
    *) die "SHOP_MONGO_SERVER must be ferretdb or nx27017, not $MONGO_SERVER" ;;
  esac
}

up_mongo() {
  install_mongo
  if port_open 27017; then log "mongo: using the server already on 27017"; return; fi
  mkdir -p "$STACK_DIR/mongo"
  if [ "$MONGO_SERVER" = ferretdb ]; then
    port_open 5432 || up_postgres
    PGPASSWORD=shop "$PG_BIN/psql" -h 127.0.0.1 -U shop -d postgres -Atqc \
      "SELECT 1 FROM pg_database WHERE datname = 'ferretdb'" | grep -q 1 \
      || PGPASSWORD=shop "$PG_BIN/psql" -h 127.0.0.1 -U shop -d postgres -qc 'CREATE DATABASE ferretdb' >/dev/null
    nohup "$FERRETDB_BIN" --listen-addr=127.0.0.1:27017 --handler=postgresql \
      --postgresql-url="postgres://shop:shop@127.0.0.1:5432/ferretdb" \
      --log-level=warn \
      >"$LOG_DIR/mongo.log" 2>&1 &
  else
    nohup "$NX_VENV/bin/nx-27017" --host 127.0.0.1 --port 27017 --data-dir "$STACK_DIR/mongo" \
      --log-file "$LOG_DIR/mongo.log" >"$LOG_DIR/mongo.out" 2>&1 &
  fi
  echo $! > "$RUN_DIR/mongo.pid"
  started_here mongo
  wait_for mongo 60 running_and "$RUN_DIR/mongo.pid" port_open 27017
  log "mongo: up on 127.0.0.1:27017 ($MONGO_SERVER)"
}

down_mongo() { kill_pidfile "$RUN_DIR/mongo.pid"; }

# ---------------------------------------------------------------- search (OpenSearch)
# One OpenSearch node, the Elasticsearch API on 9200: its jars from Maven Central
# (infra/local/search/pom.xml) and a launcher of ours (SearchNode.java, compiled here against
# them) that starts org.opensearch.node.Node with the modules a distribution would load.
install_search() {
  install_java
  maven_fetch "$REPO/infra/local/search/pom.xml" "$SEARCH_LIBS" -Dopensearch.version="$OPENSEARCH_VERSION"
  local src="$REPO/infra/local/search/SearchNode.java" sum
  sum=$(md5sum "$src" | cut -c1-12)
  SEARCH_CLASSES="$CACHE_DIR/opensearch-$OPENSEARCH_VERSION/launcher-$sum"
  [ -f "$SEARCH_CLASSES/shop/local/SearchNode.class" ] && return
  command -v javac >/dev/null || apt_install openjdk-17-jdk-headless
  mkdir -p "$SEARCH_CLASSES"
  javac -d "$SEARCH_CLASSES" -cp "$SEARCH_LIBS/*" "$src" || die "cannot compile $src"
}

up_search() {
  install_search
  if port_open 9200; then log "search: using the server already on 9200"; return; fi
  mkdir -p "$STACK_DIR/search"
  (trap '' HUP; exec java -Xms512m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dshop.log.file="$LOG_DIR/search.log" \
    -Dlog4j2.configurationFile="$REPO/infra/local/search/log4j2.properties" \
    -cp "$SEARCH_LIBS/*:$SEARCH_CLASSES" shop.local.SearchNode "$STACK_DIR/search" 9200 \
    >"$LOG_DIR/search.out" 2>&1) &
  echo $! > "$RUN_DIR/search.pid"
  started_here search
  wait_for search 120 running_and "$RUN_DIR/search.pid" \
    curl -fsS 'http://127.0.0.1:9200/_cluster/health?wait_for_status=yellow&timeout=1s'
  log "search: up on 127.0.0.1:9200 (OpenSearch $OPENSEARCH_VERSION)"
}


down_search() { kill_pidfile "$RUN_DIR/search.pid"; }

# ---------------------------------------------------------------- common
kill_pidfile() {
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# The services' gRPC ports (50051-50057) lie inside Linux's ephemeral port range (32768-60999):
# any outgoing connection (to PostgreSQL, the broker, ...) may be given one as its local port, and
# the service that starts next cannot bind it. Reserving them keeps the kernel from handing them
# out (what any host running services on such ports should do).
reserve_service_ports() {
  local f=/proc/sys/net/ipv4/ip_local_reserved_ports range=50051-50060 cur
  [ -r "$f" ] || return 0
  cur=$(cat "$f")
  case ",$cur," in *",$range,"*) return 0 ;; esac
  if { [ -w "$f" ] && echo "${cur:+$cur,}$range" >"$f"; } 2>/dev/null ||
     { command -v sudo >/dev/null && echo "${cur:+$cur,}$range" | sudo -n tee "$f" >/dev/null 2>&1; }; then
    log "reserved ports $range (net.ipv4.ip_local_reserved_ports)"
  else
    log "note: cannot reserve ports $range; a service may rarely fail to bind its port (retry make run)"
  fi
}

cmd_up() {
  local components=("$@")
  ((${#components[@]})) || components=("${ALL[@]}")
  mkdir -p "$STACK_DIR" "$LOG_DIR" "$RUN_DIR" "$CACHE_DIR"
  reserve_service_ports
  touch "$RUN_DIR/started"
  for c in "${components[@]}"; do
    case $c in postgres|redis|kafka|clickhouse|mongo|search) "up_$c" ;; *) die "unknown component $c" ;; esac
  done
}

cmd_install() {
  mkdir -p "$CACHE_DIR"
  install_postgres; command -v redis-server >/dev/null || apt_install redis-server
  [ -x /usr/sbin/clickhouse-server ] || apt_install clickhouse-server clickhouse-client
  install_kafka; install_mongo; install_search
}

cmd_down() {
  for c in search mongo clickhouse kafka redis postgres; do "down_$c"; done
  rm -f "$RUN_DIR/started"
  log "stack stopped"
}

cmd_reset() {
  local components=("$@")
  ((${#components[@]})) || components=("${ALL[@]}")
  for c in "${components[@]}"; do
    case $c in
      postgres) down_postgres; rm -rf "${PG_HOME:?}" ;;
      redis|kafka|clickhouse|mongo|search) "down_$c"; rm -rf "${STACK_DIR:?}/$c" ;;
      *) die "unknown component $c" ;;
    esac
    if [ "$c" = mongo ]; then
      # FerretDB keeps its documents in PostgreSQL's `ferretdb` database.
      port_open 5432 && PGPASSWORD=shop "$PG_BIN/psql" -h 127.0.0.1 -U shop -d postgres -qc \
        'DROP DATABASE IF EXISTS ferretdb WITH (FORCE)' >/dev/null 2>&1 || true
      # The catalog's embedded search index describes the products in MongoDB: it goes with them.
      rm -rf "${STACK_DIR:?}/catalog-index"
    fi
    sed -i "/^$c\$/d" "$RUN_DIR/started" 2>/dev/null || true
  done
  log "reset: ${components[*]}"
}

# Restarts PostgreSQL with a fast shutdown (every connection dropped), as the fault matrix's
# "PostgreSQL restarted mid-burst" does. Only a server this stack started.
cmd_restart() {
  [ "${1:-}" = postgres ] || die "usage: $0 restart postgres"
  grep -qx postgres "$RUN_DIR/started" 2>/dev/null || die "postgres was not started by this stack"
  pg_home
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_HOME/data" -l "$PG_HOME/postgres.log" -m fast -w -t 60 \
    -o "-c max_prepared_transactions=64" restart >/dev/null \
    || { tail -n 30 "$PG_HOME/postgres.log" >&2; die "postgres did not restart"; }
  log "postgres: restarted (fast shutdown)"
}

cmd_status() {
  for spec in postgres:5432 redis:6379 kafka:9092 clickhouse:8123 mongo:27017 search:9200; do
    local name=${spec%%:*} port=${spec##*:} owner="external"
    grep -qx "$name" "$RUN_DIR/started" 2>/dev/null && owner="this stack"
    if port_open "$port"; then printf '%-11s up    127.0.0.1:%-5s (%s)\n' "$name" "$port" "$owner"
    else printf '%-11s down  127.0.0.1:%s\n' "$name" "$port"; fi
  done
}

case "${1:-up}" in
  up) shift || true; cmd_up "$@" ;;
  down) cmd_down ;;
  reset) shift; cmd_reset "$@" ;;
  restart) shift; cmd_restart "$@" ;;
  status) cmd_status ;;
  install) cmd_install ;;
  *) die "usage: $0 up [component...] | down | status | install | reset [component...] | restart postgres" ;;
esac
