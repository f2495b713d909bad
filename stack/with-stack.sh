#!/usr/bin/env bash
# Runs a command with the local stack's environment (.stack/env) and returns its exit status.
# Usage: stack/with-stack.sh CMD [ARGS...]
# If the stack is already up, it is used and left running. Otherwise it is started for the
# command and stopped afterwards, whatever the command's outcome (also on Ctrl-C).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ $# -gt 0 ] || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }

state=$(stack_state)
if [ "$state" != running ]; then
  if [ "$state" = partial ]; then
    log "part of the stack has stopped; restarting all of it"
    "$STACK_SCRIPTS/down.sh"
  fi
  trap '"$STACK_SCRIPTS/down.sh"' EXIT
  trap 'exit 130' INT TERM
  "$STACK_SCRIPTS/up.sh"
fi

. "$STACK_DIR/env"
status=0
"$@" || status=$?
exit $status
