#!/usr/bin/env bash
# Crashes one control-plane process of the running stack and starts it again: SIGKILL to its
# process group (no graceful shutdown), then the same command line, ports and data directory as
# stack/up.sh used (.stack/cmd/<name>); returns once its health check passes again.
# Usage: stack/restart.sh etcd|kube-apiserver|kube-controller-manager
# The fault benchmarks (`make faults`) use it; the restarted process logs to the same file.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

name=${1:-}
case $name in
  etcd | kube-apiserver | kube-controller-manager) ;;
  *)
    echo "usage: $0 etcd|kube-apiserver|kube-controller-manager" >&2
    exit 2
    ;;
esac
[ "$(stack_state)" = running ] || die "the stack is not running; start it with 'make stack-up'"
[ -f "$STACK_DIR/cmd/$name" ] || die "$STACK_DIR/cmd/$name is missing; restart the stack"

started=$SECONDS
stop_pid "$(stack_pidfile "$name")" "$name" 10 KILL
run_component "$name"
log "$name restarted and healthy after $((SECONDS - started))s"
