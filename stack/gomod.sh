#!/usr/bin/env bash
# Regenerates the go.mod files of the Go wrapper modules under stack/go from stack/versions.env.
# Run it after changing a version there, then commit stack/go/*/go.{mod,sum}.
#
# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging paths,
# which a consumer of the module cannot use. The replace list is therefore read from
# k8s.io/kubernetes' own go.mod and pointed at the published staging versions.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.env"
export GOFLAGS=-mod=mod

kube_gomod() {
  local dir=$here/go/kube upstream
  upstream=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" \
    | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module gostoa.dev/consumer-operator/stack/kube"
    echo
    echo "go $(sed -n 's/^go //p' "$upstream")"
    echo
    echo "replace ("
    sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$KUBERNETES_STAGING_VERSION"'#p' \
      "$upstream"
    echo ")"
  } >"$dir/go.mod"
  (cd "$dir" && go get "k8s.io/kubernetes@$KUBERNETES_VERSION" \
    && go get -tool k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl && go mod tidy)
}

etcd_gomod() {
  local dir=$here/go/etcd
  printf 'module gostoa.dev/consumer-operator/stack/etcd\n\ngo 1.26\n' >"$dir/go.mod"
  (cd "$dir" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && go mod tidy)
}

helm_gomod() {
  local dir=$here/go/helm
  printf 'module gostoa.dev/consumer-operator/stack/helm\n\ngo 1.26\n' >"$dir/go.mod"
  (cd "$dir" && go get "helm.sh/helm/v4@$HELM_VERSION" && go get -tool helm.sh/helm/v4/cmd/helm \
    && go mod tidy)
}

case "${1:-all}" in
  kube) kube_gomod ;;
  etcd) etcd_gomod ;;
  helm) helm_gomod ;;
  all) kube_gomod && etcd_gomod && helm_gomod ;;
  *) echo "usage: $0 [kube|etcd|helm|all]" >&2; exit 2 ;;
esac
