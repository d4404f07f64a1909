#!/usr/bin/env bash
# The deployment's offline checks: Terraform formatting, the kustomization renders and validates against the
# Kubernetes schemas, checkov on Terraform, Dockerfile and rendered manifests (each skip carries its reason),
# hadolint, and the Taskfile parses. Needs terraform, kubectl and the Python tools named in .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "--- terraform fmt"
terraform fmt -check -recursive terraform

echo "--- kustomize render (example values)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r deploy/k8s "$work/k8s"
cp "$work/k8s/azure.env.example" "$work/k8s/azure.env"
kubectl kustomize "$work/k8s" > "$work/rendered.yaml"
grep -c '^kind:' "$work/rendered.yaml" | xargs echo "objects rendered:"

echo "--- kubernetes-validate"
kubernetes-validate --strict "$work/rendered.yaml"

echo "--- checkov"
checkov --skip-download --quiet --compact --framework terraform -d terraform
checkov --skip-download --quiet --compact --framework dockerfile -f deploy/Dockerfile
checkov --skip-download --quiet --compact --framework kubernetes -f "$work/rendered.yaml"

echo "--- hadolint"
hadolint deploy/Dockerfile

echo "--- task --list"
task --list >/dev/null
echo "offline checks passed"
