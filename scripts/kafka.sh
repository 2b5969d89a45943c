#!/usr/bin/env bash
# Run a real single-node Apache Kafka broker (KRaft mode, broker+controller in one JVM)
# for local development and tests. No Docker, no tarball: the broker's jars are resolved
# from Maven Central with scripts/kafka/pom.xml and cached under .cache/kafka/.
#
# Usage: scripts/kafka.sh {fetch|up|down|status}
#   fetch   resolve the broker jars into $KAFKA_HOME_DIR/<version>/libs (once; cached)
#   up      fetch if needed, then start a broker on a fresh, empty data dir and wait until it
#           is ready; if something already answers on $KAFKA_PORT it is reused as is
#   down    stop the broker started by `up` from this run dir (SIGTERM, then SIGKILL)
#   status  print "up" and exit 0 if $KAFKA_PORT answers, else print "down" and exit 1
#
# Environment (all optional):
#   KAFKA_PORT             client listener port            (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener port  (default 9093)
#   KAFKA_VERSION          Kafka version to run            (default: <kafka.version> in the pom)
#   KAFKA_HOME_DIR         cache root                      (default <repo>/.cache/kafka)
#   KAFKA_RUN_DIR          config, data, log and pid file  (default $KAFKA_HOME_DIR/run)
#   KAFKA_HEAP_OPTS        JVM heap flags                  (default "-Xms256m -Xmx512m")
#   KAFKA_START_TIMEOUT    seconds `up` waits for readiness (default 90)
#   KAFKA_STOP_TIMEOUT     seconds `down` waits after SIGTERM before SIGKILL (default 20)
#   KAFKA_KEEP_DATA        1: `up` restarts on the existing data dir instead of a fresh one
# A second broker for tests: KAFKA_PORT=19092 KAFKA_CONTROLLER_PORT=19093 KAFKA_RUN_DIR=/tmp/k2 scripts/kafka.sh up
#
# Needs: java (17+), and mvn for the first fetch. The broker listens on 127.0.0.1 only.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
POM_DIR=$SCRIPT_DIR/kafka
LOG4J_CONFIG=$POM_DIR/log4j2.properties

abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
pom_kafka_version() { sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$POM_DIR/pom.xml" | head -n 1; }

KAFKA_HOST=127.0.0.1
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_VERSION=${KAFKA_VERSION:-$(pom_kafka_version)}
KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
KAFKA_HOME_DIR=$(abspath "${KAFKA_HOME_DIR:-$REPO_ROOT/.cache/kafka}")
KAFKA_RUN_DIR=$(abspath "${KAFKA_RUN_DIR:-$KAFKA_HOME_DIR/run}")
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-20}

VERSION_DIR=$KAFKA_HOME_DIR/$KAFKA_VERSION
LIBS_DIR=$VERSION_DIR/libs
FETCHED_MARKER=$VERSION_DIR/.fetched
CONFIG_FILE=$KAFKA_RUN_DIR/server.properties
DATA_DIR=$KAFKA_RUN_DIR/data
LOG_FILE=$KAFKA_RUN_DIR/broker.log
PID_FILE=$KAFKA_RUN_DIR/broker.pid

say() { printf 'kafka: %s\n' "$*"; }
die() { printf 'kafka: error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH ($2)"; }

for _port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
  [[ $_port =~ ^[0-9]+$ ]] || die "ports must be numbers (KAFKA_PORT=$KAFKA_PORT KAFKA_CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT)"
done
[[ $KAFKA_PORT != "$KAFKA_CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"

# Seconds since the epoch with sub-second precision where bash offers it.
now() { if [[ -n ${EPOCHREALTIME:-} ]]; then printf '%s\n' "${EPOCHREALTIME/,/.}"; else date +%s; fi; }
elapsed_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# True if a TCP connection to 127.0.0.1:$1 is accepted.
port_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$KAFKA_HOST" "$1" 2>/dev/null; }

# Command line of a live (non-zombie) process, or nothing.
proc_args() {
  if [[ -r /proc/$1/cmdline ]]; then tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
  else ps -o args= -p "$1" 2>/dev/null || true; fi
}

# True if $1 is the broker started from this run dir (guards against stale pids / pid reuse).
is_our_broker() {
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  local args
  args=$(proc_args "$1")
  [[ $args == *kafka.Kafka* && $args == *"$CONFIG_FILE"* ]]
}

read_pid() { [[ -s $PID_FILE ]] && tr -d '[:space:]' <"$PID_FILE"; }

# Serialize concurrent fetch/up/down calls on the same directory (e.g. parallel test workers).
# The lock fds must not leak into the broker (it would hold the lock forever): see close_locks.
LOCK_FDS=()
lock() {
  command -v flock >/dev/null 2>&1 || return 0
  mkdir -p "$(dirname "$1")"
  local fd
  exec {fd}>"$1"
  LOCK_FDS+=("$fd")
  flock -w 300 "$fd" || die "could not lock $1 within 300s (another fetch/up/down still running?)"
}
close_locks() {
  local fd
  for fd in ${LOCK_FDS[@]+"${LOCK_FDS[@]}"}; do exec {fd}>&-; done
}

show_log_tail() {
  if [[ -f $LOG_FILE ]]; then
    printf -- '----- last lines of %s -----\n' "$LOG_FILE" >&2
    tail -n "${1:-60}" "$LOG_FILE" >&2
    printf -- '----- end of log -----\n' >&2
  fi
}

# SIGTERM, wait up to $2 seconds, then SIGKILL.
stop_pid() {
  local pid=$1 timeout=$2 start
  start=$(now)
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + timeout))
  while is_our_broker "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
  if is_our_broker "$pid"; then
    say "pid $pid still running after ${timeout}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 5))
    while is_our_broker "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  fi
  STOP_ELAPSED=$(elapsed_since "$start")
}

fetch() {
  if [[ -f $FETCHED_MARKER && -d $LIBS_DIR ]]; then
    return 0
  fi
  need mvn "needed once to fetch the Kafka jars"
  lock "$VERSION_DIR.lock"
  [[ -f $FETCHED_MARKER && -d $LIBS_DIR ]] && return 0   # fetched by whoever held the lock
  say "fetching $KAFKA_VERSION from Maven Central..."
  local start tmp fetch_log=$VERSION_DIR/fetch.log
  start=$(now)
  tmp=$VERSION_DIR/libs.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! mvn -q -B -Dstyle.color=never -f "$POM_DIR/pom.xml" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
      -Dkafka.version="$KAFKA_VERSION" >"$fetch_log" 2>&1; then
    rm -rf "$tmp"
    tail -n 40 "$fetch_log" >&2
    die "mvn could not resolve Kafka $KAFKA_VERSION (full output: $fetch_log)"
  fi
  [[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar ]] || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"; }
  rm -rf "$LIBS_DIR"
  mv "$tmp" "$LIBS_DIR"
  local count
  count=$(find "$LIBS_DIR" -name '*.jar' | wc -l | tr -d ' ')
  printf 'version=%s\njars=%s\nfetched=%s\n' "$KAFKA_VERSION" "$count" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$FETCHED_MARKER"
  say "fetched $count jars into $LIBS_DIR in $(elapsed_since "$start")s"
}

cmd_fetch() {
  if [[ -f $FETCHED_MARKER && -d $LIBS_DIR ]]; then
    say "$KAFKA_VERSION already cached in $LIBS_DIR"
  else
    fetch
  fi
}

# A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what
# `kafka.tools.StorageTool random-uuid` prints; done here to save a JVM start).
random_cluster_id() {
  local id
  for _ in 1 2 3 4 5 6 7 8; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ ${#id} == 22 && $id != -* ]] && { printf '%s\n' "$id"; return 0; }
  done
  java -cp "$LIBS_DIR/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1
}

write_config() {
  cat >"$CONFIG_FILE" <<EOF
# Generated by scripts/kafka.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ); rewritten on every 'up'.
# Single-node KRaft: this JVM is both broker and (the only) controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT

log.dirs=$DATA_DIR

# One node: every internal topic has a single replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Internal topics with one partition are created faster on first use (defaults: 50).
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.num.partitions=1

# Tests: no waiting for more members before the first rebalance, explicit topics only.
group.initial.rebalance.delay.ms=0
num.partitions=1
auto.create.topics.enable=false
# Group heartbeat/session timeouts are left at Kafka's defaults.

# Small footprint (the JVM runs with a 512 MiB heap; the cleaner's default buffer is 128 MiB).
log.cleaner.dedupe.buffer.size=33554432
log.cleaner.backoff.ms=1000
log.retention.check.interval.ms=60000
EOF
}

# Fresh data dir, config and a formatted KRaft log with a new cluster id.
format_storage() {
  rm -rf "$DATA_DIR"
  mkdir -p "$DATA_DIR"
  write_config

  local cluster_id
  cluster_id=$(random_cluster_id)
  [[ -n $cluster_id ]] || die "could not generate a cluster id"
  # Static quorum (controller.quorum.voters), so no --standalone: in 4.x that flag is for a
  # dynamic quorum and is refused when controller.quorum.voters is set.
  if ! java -cp "$LIBS_DIR/*" kafka.tools.StorageTool \
      format --cluster-id "$cluster_id" --config "$CONFIG_FILE" >"$KAFKA_RUN_DIR/format.log" 2>&1; then
    cat "$KAFKA_RUN_DIR/format.log" >&2
    die "formatting $DATA_DIR failed"
  fi
}

cmd_up() {
  lock "$KAFKA_RUN_DIR/.lock"
  if port_open "$KAFKA_PORT"; then
    local owner="not started by this script from $KAFKA_RUN_DIR"
    local pid
    if pid=$(read_pid) && is_our_broker "$pid"; then owner="pid $pid"; fi
    say "something already answers on $KAFKA_HOST:$KAFKA_PORT ($owner); reusing it"
    return 0
  fi
  fetch
  need java "a JDK/JRE 17+ runs the broker"
  mkdir -p "$KAFKA_RUN_DIR"

  # A broker from this run dir that is alive but not answering (hung or still starting): replace it.
  local old_pid
  if old_pid=$(read_pid) && is_our_broker "$old_pid"; then
    say "stopping unresponsive broker (pid $old_pid) from $KAFKA_RUN_DIR"
    stop_pid "$old_pid" "$KAFKA_STOP_TIMEOUT"
  fi
  rm -f "$PID_FILE"
  if port_open "$KAFKA_CONTROLLER_PORT"; then
    die "controller port $KAFKA_HOST:$KAFKA_CONTROLLER_PORT is already in use (set KAFKA_CONTROLLER_PORT)"
  fi

  local start
  start=$(now)
  say "starting $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT, run dir $KAFKA_RUN_DIR)..."
  if [[ ${KAFKA_KEEP_DATA:-0} == 1 && -f $DATA_DIR/meta.properties ]]; then
    say "keeping the existing data in $DATA_DIR (a broker restart)"
  else
    format_storage
  fi

  # Detached from the caller's session; the child records its own pid right before exec'ing java.
  local -a detach=(nohup)
  command -v setsid >/dev/null 2>&1 && detach=(setsid)
  # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS is a list of flags
  (
    close_locks
    cd "$KAFKA_RUN_DIR"
    exec "${detach[@]}" sh -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
      java $KAFKA_HEAP_OPTS -XX:+UseG1GC -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
      -cp "$LIBS_DIR/*" kafka.Kafka "$CONFIG_FILE"
  ) >"$LOG_FILE" 2>&1 </dev/null &

  local pid="" deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if [[ -z $pid ]]; then
      pid=$(read_pid) || pid=""
    elif ! is_our_broker "$pid"; then
      show_log_tail 60
      rm -f "$PID_FILE"
      die "broker (pid $pid) exited during startup; full log: $LOG_FILE"
    elif grep -qF 'Kafka Server started' "$LOG_FILE" && port_open "$KAFKA_PORT"; then
      say "up on $KAFKA_HOST:$KAFKA_PORT (pid $pid) in $(elapsed_since "$start")s"
      return 0
    fi
    sleep 0.2
  done

  show_log_tail 60
  if [[ -n $pid ]] && is_our_broker "$pid"; then
    say "stopping the broker that did not become ready (pid $pid)"
    stop_pid "$pid" 5
  fi
  rm -f "$PID_FILE"
  die "broker not ready on $KAFKA_HOST:$KAFKA_PORT after ${KAFKA_START_TIMEOUT}s; full log: $LOG_FILE"
}

cmd_down() {
  [[ -d $KAFKA_RUN_DIR ]] && lock "$KAFKA_RUN_DIR/.lock"
  local pid
  if ! pid=$(read_pid); then
    if port_open "$KAFKA_PORT"; then
      say "no pid file in $KAFKA_RUN_DIR, but something answers on $KAFKA_HOST:$KAFKA_PORT (not started from this run dir); leaving it alone"
    else
      say "not running"
    fi
    rm -f "$PID_FILE"
    return 0
  fi
  if ! is_our_broker "$pid"; then
    say "not running (removing stale pid file for pid $pid)"
    rm -f "$PID_FILE"
    return 0
  fi
  stop_pid "$pid" "$KAFKA_STOP_TIMEOUT"
  if is_our_broker "$pid"; then
    die "broker (pid $pid) is still running"
  fi
  rm -f "$PID_FILE"
  say "stopped (pid $pid) in ${STOP_ELAPSED}s"
}

cmd_status() {
  if port_open "$KAFKA_PORT"; then
    echo up
  else
    echo down
    return 1
  fi
}

case ${1:-} in
  fetch) cmd_fetch ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  -h | --help | help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' ;;
  *) echo "usage: $0 {fetch|up|down|status}" >&2; exit 2 ;;
esac
