#!/usr/bin/env bash
# Builds (or finds in the cache) every binary of the local stack and fetches Keycloak.
# Usage: stack/build.sh [kube|etcd|helm|keycloak|all]
# Prints nothing but progress on stderr; the cache layout is
#   $CACHE/<component>-<version>/bin/...   (Go binaries)
#   $CACHE/keycloak-<version>/             (the unpacked distribution)
# A directory is complete once its .done marker exists, so an interrupted build is redone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.env"
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/consumer-operator
export GOFLAGS=-mod=mod

log() { printf '[stack] %s\n' "$*" >&2; }

go_build() { # name version module-dir extra-ldflags packages...
  local name=$1 version=$2 dir=$3 ldflags="-s -w $4" out
  shift 4
  out=$CACHE/$name-$version
  if [ -f "$out/.done" ]; then return 0; fi
  log "building $name $version (cold: many minutes on 2 cores)"
  mkdir -p "$out/bin"
  local started=$SECONDS
  # NB: kube-apiserver and friends are built with the toolchain's default cgo setting, etcd and
  # helm without cgo; a changed setting recompiles everything (25 minutes here), not only links.
  (cd "$here/go/$dir" && CGO_ENABLED=${CGO:-$(go env CGO_ENABLED)} \
    go build -trimpath -ldflags="$ldflags" -o "$out/bin/" "$@")
  touch "$out/.done"
  log "built $name $version in $((SECONDS - started))s"
}

# Kubernetes' release scripts stamp the version into the binaries; without it they report
# v0.0.0-master, which `kubectl version` cannot parse and a chart's kubeVersion never satisfies.
build_kube() {
  local minor=${KUBERNETES_VERSION#v1.} stamp="" pkg
  minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    stamp+=" -X $pkg.gitTreeState=clean"
  done
  go_build kubernetes "$KUBERNETES_VERSION" kube "$stamp" k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
}
build_etcd() { CGO=0 go_build etcd "$ETCD_VERSION" etcd "" .; }
build_helm() {
  CGO=0 go_build helm "$HELM_VERSION" helm "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    helm.sh/helm/v4/cmd/helm
}

fetch_keycloak() {
  local out=$CACHE/keycloak-$KEYCLOAK_VERSION
  if [ -f "$out/.done" ]; then return 0; fi
  log "fetching org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION from Maven Central"
  mvn -q -B dependency:copy -Dartifact="org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:tar.gz" \
    -DoutputDirectory="$CACHE/downloads" -Dmdep.overWriteReleases=false >&2
  rm -rf "$out" && mkdir -p "$out"
  tar -xzf "$CACHE/downloads/keycloak-quarkus-dist-$KEYCLOAK_VERSION.tar.gz" -C "$out" \
    --strip-components=1
  touch "$out/.done"
}

case "${1:-all}" in
  kube) build_kube ;;
  etcd) build_etcd ;;
  helm) build_helm ;;
  keycloak) fetch_keycloak ;;
  all) fetch_keycloak; build_etcd; build_helm; build_kube ;;
  *) echo "usage: $0 [kube|etcd|helm|keycloak|all]" >&2; exit 2 ;;
esac
