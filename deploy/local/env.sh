# shellcheck shell=bash
# Shared settings of the local stack, sourced by start, stop and status.
#
# The servers read the same environment variables as the `rainbow` binary
# (RAINBOW_<SECTION>__<KEY>), so moving a port moves both the server and every client.
# Stack-only knobs are named RAINBOW_STACK_*; RAINBOW_HOME moves all data.
#
#   variable                              default                 used for
#   RAINBOW_HOME                          <repo>/.rainbow         every byte the stack writes; also the state root
#                                                                 of the `rainbow` binary (cdc/, processor/, store/, replay/),
#                                                                 whose own default is ./.rainbow: run it from the repository
#                                                                 root or export RAINBOW_HOME
#   RAINBOW_POSTGRES__PORT                5432                    PostgreSQL (127.0.0.1)
#   RAINBOW_POSTGRES__USER / __PASSWORD   rainbow / rainbow       role created for Rainbow
#   RAINBOW_POSTGRES__DATABASE            rainbow                 database created for Rainbow
#   RAINBOW_KAFKA__BROKERS                127.0.0.1:9092          Kafka client listener (its port is used)
#   RAINBOW_STACK_KAFKA_CONTROLLER_PORT   9093                    KRaft controller listener
#   RAINBOW_STACK_KAFKA_HEAP              768m                    Kafka JVM heap
#   RAINBOW_CLICKHOUSE__URL               http://127.0.0.1:8123   ClickHouse HTTP interface (its port is used)
#   RAINBOW_STACK_CLICKHOUSE_TCP_PORT     9000                    ClickHouse native protocol
#   RAINBOW_STACK_CLICKHOUSE_IMAGE_GB     32                      size of ClickHouse's own file system where the one under
#                                                                 RAINBOW_HOME has no journal (docs/operating.md)
#   RAINBOW_STACK_START_TIMEOUT           90                      seconds each server may take to answer
#   RAINBOW_STACK_PROMETHEUS_PORT         9090                    Prometheus web UI and API
#   RAINBOW_STACK_PROMETHEUS_INTERVAL     15s                     Prometheus scrape and rule evaluation interval
#   RAINBOW_STACK_SUPERSET_PORT           8088                    Superset web UI
#   RAINBOW_STACK_SUPERSET_VERSION        6.1.0                   apache-superset from PyPI
#   RAINBOW_STACK_SUPERSET_VENV           $RAINBOW_HOME/superset/venv   its Python venv
#   RAINBOW_CLICKHOUSE__DATABASE          rainbow                 the warehouse database the dashboard reads
#   RAINBOW_API__LISTEN, RAINBOW_{CDC,PROCESSOR,ARCHIVE,UP}__METRICS_LISTEN   what Prometheus scrapes

RAINBOW_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RAINBOW_HOME=${RAINBOW_HOME:-$RAINBOW_ROOT/.rainbow}
RUN_DIR=$RAINBOW_HOME/run
LOG_DIR=$RAINBOW_HOME/logs

PG_VERSION=15
PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin
PG_PORT=${RAINBOW_POSTGRES__PORT:-5432}
PG_USER=${RAINBOW_POSTGRES__USER:-rainbow}
PG_PASSWORD=${RAINBOW_POSTGRES__PASSWORD:-rainbow}
PG_DATABASE=${RAINBOW_POSTGRES__DATABASE:-rainbow}
PG_DIR=$RAINBOW_HOME/postgres

KAFKA_BROKERS=${RAINBOW_KAFKA__BROKERS:-127.0.0.1:9092}
KAFKA_PORT=${KAFKA_BROKERS##*:}
KAFKA_CONTROLLER_PORT=${RAINBOW_STACK_KAFKA_CONTROLLER_PORT:-9093}
KAFKA_HEAP=${RAINBOW_STACK_KAFKA_HEAP:-768m}
KAFKA_DIR=$RAINBOW_HOME/kafka

CH_URL=${RAINBOW_CLICKHOUSE__URL:-http://127.0.0.1:8123}
CH_HTTP_PORT=${CH_URL##*:}
CH_HTTP_PORT=${CH_HTTP_PORT%%/*}
CH_TCP_PORT=${RAINBOW_STACK_CLICKHOUSE_TCP_PORT:-9000}
CH_DIR=$RAINBOW_HOME/clickhouse
# ClickHouse's data on a journaled file system of its own, where the one under $CH_DIR has no
# journal (deploy/local/start: ch_data_filesystem); the image's size at creation (sparse).
CH_IMAGE=$CH_DIR/data.img
CH_IMAGE_GB=${RAINBOW_STACK_CLICKHOUSE_IMAGE_GB:-32}

CH_DATABASE=${RAINBOW_CLICKHOUSE__DATABASE:-rainbow}

PROM_PORT=${RAINBOW_STACK_PROMETHEUS_PORT:-9090}
PROM_INTERVAL=${RAINBOW_STACK_PROMETHEUS_INTERVAL:-15s}
PROM_DIR=$RAINBOW_HOME/prometheus
# The addresses of the components' /metrics, as the `rainbow` binary reads them.
SCRAPE_API=${RAINBOW_API__LISTEN:-127.0.0.1:8080}
SCRAPE_CDC=${RAINBOW_CDC__METRICS_LISTEN:-127.0.0.1:9101}
SCRAPE_PROCESSOR=${RAINBOW_PROCESSOR__METRICS_LISTEN:-127.0.0.1:9102}
SCRAPE_ARCHIVE=${RAINBOW_ARCHIVE__METRICS_LISTEN:-127.0.0.1:9103}
SCRAPE_UP=${RAINBOW_UP__METRICS_LISTEN:-127.0.0.1:9104}

SUPERSET_PORT=${RAINBOW_STACK_SUPERSET_PORT:-8088}
SUPERSET_VERSION=${RAINBOW_STACK_SUPERSET_VERSION:-6.1.0}
SUPERSET_DIR=$RAINBOW_HOME/superset
# Another stack (a test's private Superset) may reuse an installed venv instead of its own 0.9 GB.
SUPERSET_VENV=${RAINBOW_STACK_SUPERSET_VENV:-$SUPERSET_DIR/venv}

START_TIMEOUT=${RAINBOW_STACK_START_TIMEOUT:-90}
# Start order; stop goes the other way. The last two are what `start --no-dashboards` leaves out.
SERVERS=(postgres kafka clickhouse prometheus superset)
DASHBOARD_SERVERS=(prometheus superset)

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

is_port() { [[ $1 =~ ^[0-9]+$ ]] && (( $1 > 0 && $1 < 65536 )); }
for p in PG_PORT KAFKA_PORT KAFKA_CONTROLLER_PORT CH_HTTP_PORT CH_TCP_PORT PROM_PORT SUPERSET_PORT; do
  is_port "${!p}" || die "$p='${!p}' is not a TCP port (1-65535); check the RAINBOW_* variables"
done

# Runs a command as root, through sudo when we are not root.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@";
  else die "installing packages needs root (or sudo): $*"; fi
}

APT_UPDATED=""
apt_install() {
  log "installing Debian packages: $*"
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -q >/dev/null; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# pid_alive NAME: true when the PID file of NAME names a live process.
pid_alive() {
  local f=$RUN_DIR/$1.pid
  [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ch_image_mounted: true when $CH_DIR/data is the loop mount of $CH_IMAGE (not any other
# file system someone mounted there).
ch_image_mounted() {
  local source back
  source=$(findmnt -rno SOURCE --mountpoint "$CH_DIR/data" 2>/dev/null) || return 1
  [[ $source == /dev/loop* ]] || return 1
  back=$(losetup -nO BACK-FILE "$source" 2>/dev/null) || return 1
  [ "$(realpath -m "${back% (deleted)}")" = "$(realpath -m "$CH_IMAGE")" ]
}

# ch_image_trim: gives the blocks ClickHouse freed back to the host (fstrim). The image is a
# sparse file that otherwise keeps the high-water mark of everything ever written (3.9 GB after a
# few benchmark runs, for a warehouse of a few MB); at start and stop rather than with the mount
# option `discard`, which cost freshness in 3 runs measured against 3 without it.
ch_image_trim() {
  # Blocks freed in a journal transaction not yet committed are not trimmed: commit first.
  as_root sync -f "$CH_DIR/data" 2>/dev/null || true
  as_root fstrim "$CH_DIR/data" 2>/dev/null \
    || log "warning: fstrim $CH_DIR/data failed; $CH_IMAGE keeps the blocks ClickHouse freed"
}

# ch_image_unmount: unmounts ClickHouse's file system (after ClickHouse stopped); its data stays
# in $CH_IMAGE, mounted again at the next start.
ch_image_unmount() {
  if ch_image_mounted; then
    ch_image_trim
    log "unmounting ClickHouse's file system ($CH_IMAGE from $CH_DIR/data)"
    as_root umount "$CH_DIR/data" || die "umount $CH_DIR/data failed: see \`findmnt $CH_DIR/data\`; a process may still use it (fuser -vm $CH_DIR/data)"
  fi
}

# wait_for NAME TIMEOUT CMD...: polls CMD every 0.5 s until it succeeds or TIMEOUT seconds pass.
wait_for() {
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "$name"; then
      die "$name exited during start-up; last lines of its log ($LOG_DIR/$name.log):
$(tail -n 20 "$LOG_DIR/$name.log" 2>/dev/null)"
    fi
    if (( SECONDS >= deadline )); then
      die "$name did not answer within ${timeout}s (RAINBOW_STACK_START_TIMEOUT); see $LOG_DIR/$name.log"
    fi
    sleep 0.5
  done
}
