#!/usr/bin/env bash
# The developer loop on a running local stack (`make dev` starts the stack first): applies the
# CRDs, creates the example tenant realm `acme` in Keycloak, writes the operator's Keycloak admin
# credentials into .stack/admin-credentials, applies examples/*.yaml, prints how to get a token
# with a consumer's generated credentials, then runs the operator in the foreground.
# Every step can be repeated: running it again changes nothing that is already there.
# Ctrl-C stops the operator; the stack keeps running until `make stack-down`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ -f "$STACK_DIR/env" ] || die "the stack is not running; start it with 'make stack-up'"
. "$STACK_DIR/env"
cd "$STACK_ROOT"
EXAMPLE_REALM=acme

# --- CRDs, and wait until the API server serves them
shopt -s nullglob
crds=(crds/*.yaml)
[ ${#crds[@]} -gt 0 ] || die "no CRDs in crds/; generate them with 'make crds'"
for f in "${crds[@]}"; do
  "$KUBECTL" apply --server-side -f "$f"
  "$KUBECTL" wait --for=condition=Established --timeout=60s -f "$f"
done

# --- the example tenant realm, through Keycloak's admin REST API
admin_token() {
  curl -sf --data-urlencode grant_type=password --data-urlencode client_id=admin-cli \
    --data-urlencode "username=$KEYCLOAK_ADMIN_USER" \
    --data-urlencode "password=$KEYCLOAK_ADMIN_PASSWORD" \
    "$KEYCLOAK_URL/realms/master/protocol/openid-connect/token" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}
token=$(admin_token) || die "could not get an admin token from $KEYCLOAK_URL"
realm_status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
  "$KEYCLOAK_URL/admin/realms/$EXAMPLE_REALM")
case $realm_status in
  200) log "realm $EXAMPLE_REALM already exists" ;;
  404)
    curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
      -d "{\"realm\": \"$EXAMPLE_REALM\", \"enabled\": true}" "$KEYCLOAK_URL/admin/realms" \
      || die "could not create realm $EXAMPLE_REALM"
    log "created realm $EXAMPLE_REALM"
    ;;
  *) die "looking up realm $EXAMPLE_REALM: HTTP $realm_status" ;;
esac

# --- the operator's admin credentials, laid out like a mounted Secret
creds=$STACK_DIR/admin-credentials
mkdir -p "$creds"
chmod 700 "$creds"
(umask 077 && printf '%s' "$KEYCLOAK_ADMIN_USER" >"$creds/username" \
  && printf '%s' "$KEYCLOAK_ADMIN_PASSWORD" >"$creds/password")

# --- the example manifests
examples=(examples/*.yaml)
for f in "${examples[@]}"; do "$KUBECTL" apply --server-side -f "$f"; done

# --- how to get a token with a consumer's generated credentials
first=$("$KUBECTL" get consumers -A \
  -o jsonpath='{range .items[0]}{.metadata.namespace} {.metadata.name}{end}' 2>/dev/null || true)
read -r ns name <<<"${first:-<namespace> <consumer>}"
cat <<EOF

The stack is up (. .stack/env to use it: \$KUBECTL, \$HELM, \$KEYCLOAK_URL).
Keycloak admin console: $KEYCLOAK_URL/admin/ (user $KEYCLOAK_ADMIN_USER, password in
.stack/admin-credentials/password). Example realm: $EXAMPLE_REALM.

Once the operator has reconciled a Consumer, get a token with its generated credentials:

  . .stack/env
  secret=\$(\$KUBECTL -n $ns get consumer $name -o jsonpath='{.status.secretName}')
  field() { \$KUBECTL -n $ns get secret "\$secret" -o jsonpath="{.data.\$1}" | base64 -d; }
  curl -s -u "\$(field client_id):\$(field client_secret)" -d grant_type=client_credentials \\
    "\$(field token_url)"

Starting the operator (Ctrl-C stops it; 'make stack-down' stops the stack).

EOF

read -r metrics_port health_port <<<"$(free_ports 2 | tr '\n' ' ')"
exec cargo run -- run --keycloak-url "$KEYCLOAK_URL" \
  --keycloak-admin-credentials-dir "$creds" \
  --metrics-addr "127.0.0.1:$metrics_port" --health-addr "127.0.0.1:$health_port"
