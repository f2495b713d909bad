#!/usr/bin/env bash
# Copies the CRDs (crds/*.yaml, what `consumer-operator crd` prints) into the Helm chart and the
# kustomize manifests, which must carry identical copies.
# Usage: deploy/sync-crds.sh           copy, removing copies whose source is gone
#        deploy/sync-crds.sh --check   change nothing; exit 1 and name the files that differ
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
src=$top/crds
targets=("$top/deploy/helm/consumer-operator/crds" "$top/deploy/manifests/crds")

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

shopt -s nullglob
sources=("$src"/*.yaml)
if [ ${#sources[@]} -eq 0 ]; then
  echo "sync-crds: no CRDs in $src (generate them with 'consumer-operator crd' first)" >&2
  exit 2
fi

stale=0
for dir in "${targets[@]}"; do
  for file in "${sources[@]}"; do
    copy=$dir/$(basename "$file")
    if cmp -s "$file" "$copy"; then continue; fi
    if $check; then
      echo "sync-crds: ${copy#"$top"/} differs from ${file#"$top"/}" >&2
      stale=1
    else
      mkdir -p "$dir"
      cp "$file" "$copy"
      echo "sync-crds: updated ${copy#"$top"/}" >&2
    fi
  done
  for copy in "$dir"/*.yaml; do
    if [ -e "$src/$(basename "$copy")" ]; then continue; fi
    if $check; then
      echo "sync-crds: ${copy#"$top"/} has no source in crds/" >&2
      stale=1
    else
      rm "$copy"
      echo "sync-crds: removed ${copy#"$top"/}" >&2
    fi
  done
done
if $check && [ "$stale" -ne 0 ]; then
  echo "sync-crds: run deploy/sync-crds.sh" >&2
  exit 1
fi
