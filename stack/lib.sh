# shellcheck shell=bash
# Shared helpers of the stack scripts: sourced, never run. Starts background processes in their own
# session (so that stopping one also stops the children it forked, such as Keycloak's JVM under
# kc.sh), stops them by pid file with a bounded wait, and polls health checks with a deadline.

STACK_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STACK_ROOT=$(cd "$STACK_SCRIPTS/.." && pwd)
. "$STACK_SCRIPTS/versions.env"
# shellcheck disable=SC2034 # used by the scripts that source this file
STACK_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/consumer-operator

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

# is_running PIDFILE: true when the pid file names a live process (not a zombie) that is the one
# started: its start time is saved next to the pid, so a reused pid does not count (the start time
# stays the same across exec, unlike the command line).
is_running() {
  local pidfile=$1 pid
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  [ "$(ps -o lstart= -p "$pid" 2>/dev/null)" = "$(cat "$pidfile.start" 2>/dev/null)" ] || return 1
  ! ps -o stat= -p "$pid" | grep -q '^Z'
}

# start_bg PIDFILE LOGFILE CMD...: runs CMD in a new session, in the background, output appended
# to LOGFILE. The pid written is that of the session leader, which is also its process group.
start_bg() {
  local pidfile=$1 logfile=$2
  shift 2
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
  rm -f "$pidfile" "$pidfile.start"
  # The inner shell writes its own pid before exec, so the pid is right whether or not setsid had
  # to fork to become a session leader.
  setsid bash -c 'echo $$ >"$0.tmp" && exec "$@"' "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 &
  for _ in $(seq 50); do
    [ -s "$pidfile.tmp" ] && break
    sleep 0.1
  done
  [ -s "$pidfile.tmp" ] || die "could not start $1"
  ps -o lstart= -p "$(cat "$pidfile.tmp")" >"$pidfile.start" 2>/dev/null || true
  mv "$pidfile.tmp" "$pidfile"
}

# stop_pid PIDFILE NAME [TIMEOUT] [SIGNAL]: SIGNAL (default TERM) to the process group, wait up to
# TIMEOUT seconds (default 30), then KILL. Removes the pid file. A pid file of a process that is
# gone is just removed. With SIGNAL KILL the process gets no chance to clean up: a crash.
stop_pid() {
  local pidfile=$1 name=$2 timeout=${3:-30} signal=${4:-TERM} pid
  if ! [ -s "$pidfile" ]; then
    rm -f "$pidfile" "$pidfile.start"
    return 0
  fi
  pid=$(cat "$pidfile")
  if is_running "$pidfile"; then
    log "stopping $name (pid $pid, SIG$signal)"
    kill "-$signal" -- "-$pid" 2>/dev/null || kill "-$signal" "$pid" 2>/dev/null || true
    for _ in $(seq $((timeout * 10))); do
      group_alive "$pid" || break
      sleep 0.1
    done
    if group_alive "$pid"; then
      log "$name did not stop within ${timeout}s; killing it"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 50); do
        group_alive "$pid" || break
        sleep 0.1
      done
    fi
    # The process has exited; give init a moment to reap it, so that ps shows nothing left.
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$pidfile" "$pidfile.start"
}

# group_alive PGID: true while any process of the process group is alive (not a zombie).
group_alive() {
  ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}

# wait_until NAME TIMEOUT LOGFILE PIDFILE CMD...: polls CMD every half second until it succeeds.
# Fails with the tail of LOGFILE when TIMEOUT seconds pass or the process behind PIDFILE exits.
wait_until() {
  local name=$1 timeout=$2 logfile=$3 pidfile=$4 deadline
  shift 4
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$pidfile" ] && ! is_running "$pidfile"; then
      log "$name exited before it became healthy; last lines of $logfile:"
      tail -n 40 "$logfile" >&2
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      log "$name not healthy after ${timeout}s; last lines of $logfile:"
      tail -n 40 "$logfile" >&2
      return 1
    fi
    sleep 0.5
  done
}

# free_ports N: prints N distinct free TCP ports of 127.0.0.1, one a line.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
EOF
}

# java_home: the JDK to run Keycloak with. JAVA_HOME when set, else the machine's JDK 17, else the
# JDK of the `java` on PATH.
java_home() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    echo "$JAVA_HOME"
    return
  fi
  local d
  for d in /usr/lib/jvm/java-17-openjdk-* /usr/lib/jvm/java-17-* /usr/lib/jvm/*-17-*; do
    [ -x "$d/bin/java" ] && { echo "$d"; return; }
  done
  command -v java >/dev/null || die "no Java found: install a JDK 17, 21 or 25 or set JAVA_HOME"
  dirname "$(dirname "$(readlink -f "$(command -v java)")")"
}

# The local stack's own layout, shared by up.sh, down.sh and with-stack.sh.
STACK_DIR=$STACK_ROOT/.stack
STACK_PROCS=(etcd kube-apiserver kube-controller-manager keycloak)
# The pid file of a process of the stack. Keycloak's lives in its data directory, where
# stack/keycloak.sh keeps it.
stack_pidfile() {
  case $1 in
    keycloak) echo "$STACK_DIR/keycloak/keycloak.pid" ;;
    *) echo "$STACK_DIR/pids/$1.pid" ;;
  esac
}

# run_component NAME: starts a control-plane process of the stack (etcd, kube-apiserver,
# kube-controller-manager) from the command line and health check stack/up.sh saved in
# .stack/cmd/NAME, and waits until the check passes. stack/restart.sh uses the same file, so a
# restarted process has the same flags, ports and data as the first one.
run_component() {
  local name=$1 health timeout cmd
  # shellcheck disable=SC1090 # written by up.sh: health=..., timeout=..., cmd=(...)
  . "$STACK_DIR/cmd/$name"
  start_bg "$(stack_pidfile "$name")" "$STACK_DIR/logs/$name.log" "${cmd[@]}"
  wait_until "$name" "$timeout" "$STACK_DIR/logs/$name.log" "$(stack_pidfile "$name")" \
    bash -c "$health"
}

# stack_state: prints `running` (every process of the stack is alive and .stack/env exists),
# `stopped` (none is alive) or `partial`.
stack_state() {
  local name alive=0
  for name in "${STACK_PROCS[@]}"; do
    is_running "$(stack_pidfile "$name")" && alive=$((alive + 1))
  done
  if [ $alive -eq ${#STACK_PROCS[@]} ] && [ -f "$STACK_DIR/env" ]; then
    echo running
  elif [ $alive -eq 0 ]; then
    echo stopped
  else
    echo partial
  fi
}
