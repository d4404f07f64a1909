#!/usr/bin/env bash
# Runs a one-off Job from its kustomization and prints its logs: deletes the previous run (a Job's pod template
# is immutable, so a new image could not be applied over it), applies the kustomization, waits until the Job
# completes or fails, prints the logs, and exits 1 unless it completed.
# Usage: run-job.sh KUSTOMIZATION NAMESPACE JOB [TIMEOUT_SECONDS]
set -euo pipefail
usage="usage: run-job.sh KUSTOMIZATION NAMESPACE JOB [TIMEOUT_SECONDS]"
dir="${1:?$usage}"
namespace="${2:?$usage}"
job="${3:?$usage}"
timeout="${4:-300}"

kubectl -n "$namespace" delete job "$job" --ignore-not-found
kubectl apply -k "$dir"

# `kubectl wait` takes one condition; a failing Job would never meet Complete and only time out.
deadline=$((SECONDS + timeout))
state=""
while [[ -z "$state" ]]; do
  conditions=" $(kubectl -n "$namespace" get job "$job" \
    -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}' || true) "
  case "$conditions" in
    *" Complete "*) state=complete ;;
    *" Failed "*) state=failed ;;
    *) if ((SECONDS >= deadline)); then state="still running after ${timeout}s"; else sleep 5; fi ;;
  esac
done

kubectl -n "$namespace" logs "job/$job" --all-containers=true || true
echo "job/$job in namespace $namespace: $state"
[[ "$state" == complete ]]
