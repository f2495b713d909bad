#!/usr/bin/env bash
# Starts or stops one Keycloak instance of the local stack, in dev mode, on 127.0.0.1.
#
# Usage:
#   stack/keycloak.sh start <data-dir> <http-port> <management-port>
#   stack/keycloak.sh stop  <data-dir>
#   stack/keycloak.sh kill  <data-dir>    (SIGKILL: a crash, for the fault benchmarks)
#   (stop and kill also accept, and ignore, the two ports, so a caller can pass the same arguments)
#
# Each instance lives in <data-dir>: its own Keycloak home (a few MB of copied files plus a link to
# the cached distribution's jars, so instances never write into each other's files), its H2
# database under <data-dir>/home/data, its log in <data-dir>/keycloak.log and its pid in
# <data-dir>/keycloak.pid. Stopping and starting the same <data-dir> keeps its realms; a new
# <data-dir> is a new, empty Keycloak.
#
# `start` returns once /health/ready on the management port answers and the master realm is served
# (bounded by KEYCLOAK_START_TIMEOUT seconds, default 300); on failure it prints the log tail and
# exits non-zero. The bootstrap admin is KEYCLOAK_ADMIN_USER / KEYCLOAK_ADMIN_PASSWORD from the
# environment (required; .stack/env exports them); it is created only when the master realm is,
# that is on the first start of a <data-dir>. Health and Prometheus metrics (including the HTTP
# server metrics, http_server_requests_seconds_count) are on the management port; the
# client-secret-rotation feature is enabled because the operator's rotation grace relies on it.
# JAVA_HOME, when set, chooses the JDK; otherwise the machine's JDK 17.
#
# Integration tests that need a Keycloak of their own (to stop it and start it again) call this
# with a temporary <data-dir> and two free ports, and must call `stop` when done.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
  echo "usage: $0 start <data-dir> <http-port> <management-port> | stop|kill <data-dir>" >&2
  exit 2
}

# The build-time options of start-dev. Changing them makes Keycloak re-augment (a minute of CPU).
BUILD_OPTS=(--health-enabled=true --metrics-enabled=true --http-metrics-histograms-enabled=true
  --features=client-secret-rotation)
DIST=$STACK_CACHE/keycloak-$KEYCLOAK_VERSION
# Where the first instance saves its augmented lib/quarkus, keyed by the options, for the next
# instances to start without re-augmenting.
AUGMENTED=$DIST-dev-$(printf '%s\n' "${BUILD_OPTS[@]}" | sha256sum | cut -c1-12)

# prepare_home DATA_DIR: the instance's Keycloak home. Keycloak re-augments (rewrites
# lib/quarkus) when its build options change, so that directory is a private copy; the 170 MB
# of jars under lib/lib are only read and are linked.
prepare_home() {
  local home=$1/home
  [ -f "$DIST/.done" ] || "$STACK_SCRIPTS/build.sh" keycloak
  [ -f "$home/.version" ] && [ "$(cat "$home/.version")" = "$KEYCLOAK_VERSION" ] && return 0
  [ -d "$home/data" ] && die "$home holds data of another Keycloak version; remove $1 first"
  mkdir -p "$home/lib"
  cp -a "$DIST/bin" "$DIST/conf" "$DIST/providers" "$DIST/themes" "$DIST/version.txt" "$home/"
  cp -a "$DIST/lib/app" "$DIST/lib/quarkus-run.jar" "$home/lib/"
  if [ -d "$AUGMENTED" ]; then
    cp -a "$AUGMENTED" "$home/lib/quarkus"
  else
    cp -a "$DIST/lib/quarkus" "$home/lib/quarkus"
  fi
  ln -sfn "$DIST/lib/lib" "$home/lib/lib"
  echo "$KEYCLOAK_VERSION" >"$home/.version"
}

# save_augmented DATA_DIR: keeps the instance's augmented lib/quarkus for later instances. The
# copy is renamed into place, so concurrent instances never see half of one.
save_augmented() {
  [ -d "$AUGMENTED" ] && return 0
  local tmp
  tmp=$(mktemp -d "$AUGMENTED.XXXXXX")
  cp -a "$1/home/lib/quarkus/." "$tmp/"
  mv -T "$tmp" "$AUGMENTED" 2>/dev/null || rm -rf "$tmp"
}

start() {
  local dir=$1 http_port=$2 mgmt_port=$3
  : "${KEYCLOAK_ADMIN_USER:?set KEYCLOAK_ADMIN_USER (the bootstrap admin)}"
  : "${KEYCLOAK_ADMIN_PASSWORD:?set KEYCLOAK_ADMIN_PASSWORD (the bootstrap admin)}"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if is_running "$dir/keycloak.pid"; then
    die "a Keycloak already runs from $dir (pid $(cat "$dir/keycloak.pid"))"
  fi
  prepare_home "$dir"

  JAVA_HOME=$(java_home) KC_BOOTSTRAP_ADMIN_USERNAME=$KEYCLOAK_ADMIN_USER \
    KC_BOOTSTRAP_ADMIN_PASSWORD=$KEYCLOAK_ADMIN_PASSWORD \
    start_bg "$dir/keycloak.pid" "$dir/keycloak.log" "$dir/home/bin/kc.sh" start-dev \
    --http-host=127.0.0.1 --http-port="$http_port" --http-management-port="$mgmt_port" \
    "${BUILD_OPTS[@]}"
  log "keycloak starting from $dir on http://127.0.0.1:$http_port (management $mgmt_port)"

  wait_until keycloak "${KEYCLOAK_START_TIMEOUT:-300}" "$dir/keycloak.log" "$dir/keycloak.pid" \
    curl -sf "http://127.0.0.1:$mgmt_port/health/ready"
  wait_until keycloak 60 "$dir/keycloak.log" "$dir/keycloak.pid" \
    curl -sf "http://127.0.0.1:$http_port/realms/master"
  save_augmented "$dir"
  log "keycloak ready on http://127.0.0.1:$http_port"
}

stop() { # DATA_DIR [SIGNAL]
  local dir=$1
  [ -d "$dir" ] || return 0
  stop_pid "$dir/keycloak.pid" keycloak 60 "${2:-TERM}"
}

case "${1:-}" in
  start) [ $# -eq 4 ] || usage; start "$2" "$3" "$4" ;;
  stop) [ $# -eq 2 ] || [ $# -eq 4 ] || usage; stop "$2" ;;
  kill) [ $# -eq 2 ] || [ $# -eq 4 ] || usage; stop "$2" KILL ;;
  *) usage ;;
esac
