#!/usr/bin/env bash
# Starts the local stack in the background: etcd, kube-apiserver, kube-controller-manager and
# Keycloak, all on free ports of 127.0.0.1, and writes .stack/env once every one of them answers
# its health check. Usage: stack/up.sh (or `make stack-up`); stop it with stack/down.sh.
#
# Binaries come from stack/build.sh (built once, then cached). Every start is a fresh cluster and
# a fresh Keycloak: the state of the previous run (.stack/etcd, .stack/keycloak, .stack/pki) is
# removed first. Logs are in .stack/logs/<name>.log, pids in .stack/pids/<name>.pid, and the command
# lines of etcd, kube-apiserver and kube-controller-manager in .stack/cmd/<name> (stack/restart.sh).
# If anything fails, what was started is stopped again and the script exits non-zero.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

case $(stack_state) in
  running)
    echo "stack already running (.stack/env)"
    exit 0
    ;;
  partial)
    die "part of the stack is running, part is not; run 'make stack-down' first"
    ;;
esac

"$STACK_SCRIPTS/build.sh" all
KUBE_BIN=$STACK_CACHE/kubernetes-$KUBERNETES_VERSION/bin
ETCD_BIN=$STACK_CACHE/etcd-$ETCD_VERSION/bin
HELM_BIN=$STACK_CACHE/helm-$HELM_VERSION/bin

rm -rf "$STACK_DIR/etcd" "$STACK_DIR/keycloak" "$STACK_DIR/pki" "$STACK_DIR/pids" \
  "$STACK_DIR/cmd" "$STACK_DIR/logs" "$STACK_DIR/env" "$STACK_DIR/kubeconfig" \
  "$STACK_DIR/admin-credentials"
mkdir -p "$STACK_DIR/pki" "$STACK_DIR/pids" "$STACK_DIR/logs" "$STACK_DIR/cmd"
PKI=$STACK_DIR/pki
LOGS=$STACK_DIR/logs
PIDS=$STACK_DIR/pids

# start_component NAME TIMEOUT HEALTH CMD...: saves CMD and the shell command HEALTH in
# .stack/cmd/NAME (for stack/restart.sh), starts CMD and waits up to TIMEOUT seconds for HEALTH.
start_component() {
  local name=$1 timeout=$2 health=$3
  shift 3
  {
    printf 'health=%q\ntimeout=%q\ncmd=(' "$health" "$timeout"
    printf ' %q' "$@"
    printf ' )\n'
  } >"$STACK_DIR/cmd/$name"
  run_component "$name"
}

# From here on, a failure stops whatever was already started.
keycloak_job=
on_exit() {
  local status=$?
  [ $status -eq 0 ] && return
  log "stack-up failed; stopping what it started"
  if [ -n "$keycloak_job" ]; then
    kill "$keycloak_job" 2>/dev/null || true
    wait "$keycloak_job" 2>/dev/null || true
  fi
  "$STACK_SCRIPTS/down.sh" || true
}
trap on_exit EXIT
trap 'exit 130' INT TERM

read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT KEYCLOAK_PORT KEYCLOAK_MGMT_PORT \
  <<<"$(free_ports 6 | tr '\n' ' ')"
SERVICE_CIDR=10.0.0.0/24
KEYCLOAK_ADMIN_USER='admin'
KEYCLOAK_ADMIN_PASSWORD=$(openssl rand -hex 16)
export KEYCLOAK_ADMIN_USER KEYCLOAK_ADMIN_PASSWORD

# Keycloak is the slowest to start (a minute or more), so it starts first, in the background.
"$STACK_SCRIPTS/keycloak.sh" start "$STACK_DIR/keycloak" "$KEYCLOAK_PORT" "$KEYCLOAK_MGMT_PORT" &
keycloak_job=$!
ln -s ../keycloak/keycloak.log "$LOGS/keycloak.log"
ln -s ../keycloak/keycloak.pid "$PIDS/keycloak.pid"

# --- certificates: one CA signs the API server's serving certificate and the admin's client
# certificate; a separate key pair signs and verifies service-account tokens.
sign() { # name subject extension-lines...
  local name=$1 subject=$2
  shift 2
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subject" \
    -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -days 365 \
    -set_serial "0x$(openssl rand -hex 16)" -out "$PKI/$name.crt" \
    -extfile <(printf '%s\n' "$@") 2>/dev/null
  rm -f "$PKI/$name.csr"
}
openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" \
  -subj "/CN=consumer-operator-stack-ca" -out "$PKI/ca.csr" 2>/dev/null
openssl x509 -req -in "$PKI/ca.csr" -signkey "$PKI/ca.key" -days 3650 -out "$PKI/ca.crt" \
  -extfile <(printf '%s\n' basicConstraints=critical,CA:TRUE subjectKeyIdentifier=hash \
    keyUsage=critical,keyCertSign,cRLSign,digitalSignature) 2>/dev/null
rm -f "$PKI/ca.csr"
LEAF=('basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment'
  'authorityKeyIdentifier=keyid')
# The names a client may use for the API server: loopback, and (10.0.0.1 is the first address of
# SERVICE_CIDR) the in-cluster service.
SANS=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default
SANS+=,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
sign apiserver /CN=kube-apiserver "${LEAF[@]}" extendedKeyUsage=serverAuth "subjectAltName=$SANS"
sign admin /O=system:masters/CN=admin "${LEAF[@]}" extendedKeyUsage=clientAuth
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
chmod 600 "$PKI"/*.key

KUBE_APISERVER_URL=https://127.0.0.1:$APISERVER_PORT
b64() { base64 -w0 <"$1"; }
cat >"$STACK_DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: stack
  cluster:
    server: $KUBE_APISERVER_URL
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "$PKI/admin.crt")
    client-key-data: $(b64 "$PKI/admin.key")
contexts:
- name: stack
  context:
    cluster: stack
    user: admin
    namespace: default
current-context: stack
EOF
chmod 600 "$STACK_DIR/kubeconfig"

# --- etcd
ETCD_URL=http://127.0.0.1:$ETCD_PORT
start_component etcd 60 "curl -sf '$ETCD_URL/health' | grep -q '\"health\":\"true\"'" \
  "$ETCD_BIN/etcd" --name=stack \
  --data-dir="$STACK_DIR/etcd" --listen-client-urls="$ETCD_URL" \
  --advertise-client-urls="$ETCD_URL" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="stack=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync=true \
  --log-level=warn
log "etcd ready on $ETCD_URL"

# --- kube-apiserver. The endpoint reconciler would publish the advertise address as the
# `kubernetes` Service's endpoint and refuses a loopback one; nothing runs in a pod here, so it
# is off.
READYZ="curl -sf --cacert '$PKI/ca.crt' --cert '$PKI/admin.crt' --key '$PKI/admin.key'"
READYZ+=" '$KUBE_APISERVER_URL/readyz' | grep -qx ok"
start_component kube-apiserver 180 "$READYZ" "$KUBE_BIN/kube-apiserver" \
  --etcd-servers="$ETCD_URL" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
  --secure-port="$APISERVER_PORT" --cert-dir="$PKI/apiserver-generated" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" --authorization-mode=RBAC \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true --profiling=false \
  --endpoint-reconciler-type=none
log "kube-apiserver ready on $KUBE_APISERVER_URL"

# --- kube-controller-manager: every default controller, the garbage collector and the namespace
# controller among them, as the admin (no per-controller service accounts to keep it simple).
start_component kube-controller-manager 120 "curl -sfk 'https://127.0.0.1:$KCM_PORT/healthz'" \
  "$KUBE_BIN/kube-controller-manager" --kubeconfig="$STACK_DIR/kubeconfig" \
  --authentication-kubeconfig="$STACK_DIR/kubeconfig" \
  --authorization-kubeconfig="$STACK_DIR/kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$PKI/kcm-generated" \
  --leader-elect=false --controllers='*' --service-cluster-ip-range="$SERVICE_CIDR" \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --profiling=false
log "kube-controller-manager ready"

wait "$keycloak_job" || die "keycloak did not start (see $LOGS/keycloak.log)"

# .stack/env is written last: its presence means the stack is ready.
{
  echo "# Written by stack/up.sh; source it: . .stack/env"
  for var in STACK_DIR KUBECONFIG KUBECTL HELM KUBE_APISERVER_URL KUBE_CA_FILE ETCD_URL \
    KEYCLOAK_URL KEYCLOAK_MANAGEMENT_URL KEYCLOAK_ADMIN_USER KEYCLOAK_ADMIN_PASSWORD \
    KEYCLOAK_HOME KEYCLOAK_SH JAVA_HOME; do
    case $var in
      KUBECONFIG) value=$STACK_DIR/kubeconfig ;;
      KUBECTL) value=$KUBE_BIN/kubectl ;;
      HELM) value=$HELM_BIN/helm ;;
      KUBE_CA_FILE) value=$PKI/ca.crt ;;
      KEYCLOAK_URL) value=http://127.0.0.1:$KEYCLOAK_PORT ;;
      KEYCLOAK_MANAGEMENT_URL) value=http://127.0.0.1:$KEYCLOAK_MGMT_PORT ;;
      KEYCLOAK_HOME) value=$STACK_CACHE/keycloak-$KEYCLOAK_VERSION ;;
      KEYCLOAK_SH) value=$STACK_SCRIPTS/keycloak.sh ;;
      JAVA_HOME) value=$(java_home) ;;
      *) value=${!var} ;;
    esac
    printf 'export %s=%q\n' "$var" "$value"
  done
} >"$STACK_DIR/env.tmp"
chmod 600 "$STACK_DIR/env.tmp"
mv "$STACK_DIR/env.tmp" "$STACK_DIR/env"
log "stack ready: . .stack/env"
