#!/usr/bin/env bash
# Stops everything stack/up.sh started (TERM, a bounded wait, then KILL) and removes .stack/env,
# the pid files and the admin credentials. Logs stay in .stack/logs until the next stack-up; so
# does the data, which the next stack-up replaces.
# Usage: stack/down.sh (or `make stack-down`); safe to run at any time.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# .stack/env goes first, so that nobody takes a stack that is going away for a running one.
rm -f "$STACK_DIR/env"

"$STACK_SCRIPTS/keycloak.sh" stop "$STACK_DIR/keycloak"
for name in kube-controller-manager kube-apiserver etcd; do
  stop_pid "$(stack_pidfile "$name")" "$name" 30
done

# The admin credentials stack/dev.sh wrote are of no use once Keycloak is gone.
rm -rf "$STACK_DIR/pids" "$STACK_DIR/admin-credentials"
log "stack stopped (logs in .stack/logs)"
