#!/usr/bin/env bash
# Samples, once a second, the cumulative CPU seconds of every process name on the machine (as
# `ps -o times=` counts them, to the second), one line per name: `<epoch> <name> <seconds>`.
# Run it in the background during a benchmark; the difference of two samples is the CPU each
# program (Keycloak's java, kube-apiserver, etcd, the operator) spent in between.
# Usage: bench/tools/cpu-sample.sh > cpu.log &
set -euo pipefail
while true; do
  now=$(date +%s.%N)
  ps -eo comm=,times= | awk -v t="$now" '{ cpu[$1] += $2 } END { for (n in cpu) print t, n, cpu[n] }'
  sleep 1
done
