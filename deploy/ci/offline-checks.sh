#!/usr/bin/env bash
# The deployment's offline checks: shellcheck on every shell script, Terraform formatting, each kustomization
# (app, bootstrap, doctor, the proxy-sidecar example) renders and validates against the Kubernetes schemas, checkov on Terraform, the
# Dockerfile and the rendered manifests (each skip carries its reason), hadolint, the Taskfile parses, and
# docs/aks.md walked end to end with stand-ins for Azure and a kubectl with no cluster (walk-docs.sh).
# Needs shellcheck, terraform, kubectl, git, python3 and the Python tools named in .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "--- shellcheck"
scripts=()
while IFS= read -r -d '' f; do
  [[ -f "$f" ]] || continue
  if [[ "$f" == *.sh ]] || head -n 1 "$f" | grep -qE '^#!.*\b(ba)?sh\b'; then scripts+=("$f"); fi
done < <(git ls-files -z --cached --others --exclude-standard)
shellcheck "${scripts[@]}"
echo "${#scripts[@]} scripts: ${scripts[*]}"

echo "--- terraform fmt"
terraform fmt -check -recursive terraform

echo "--- kustomize render (example values)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r deploy/k8s "$work/k8s"
cp "$work/k8s/values/azure.env.example" "$work/k8s/values/azure.env"
kustomizations=(app bootstrap doctor proxy-sidecar)
for k in "${kustomizations[@]}"; do
  kubectl kustomize "$work/k8s/$k" >"$work/$k.yaml"
  echo "$k: $(grep '^kind:' "$work/$k.yaml" | sed 's/kind: //' | paste -sd ' ')"
  if grep -q 'set-by-kustomize' "$work/$k.yaml"; then
    echo "$k: a placeholder was not replaced:"; grep -n 'set-by-kustomize' "$work/$k.yaml"; exit 1
  fi
done
# `task deploy` applies app for every new image; a Job there could not be updated (its template is immutable).
if grep -q '^kind: Job$' "$work/app.yaml"; then
  echo "deploy/k8s/app renders a Job: Jobs belong in their own kustomization (bootstrap, doctor)"; exit 1
fi

echo "--- kubernetes-validate"
for k in "${kustomizations[@]}"; do kubernetes-validate --strict "$work/$k.yaml"; done

echo "--- checkov"
checkov --skip-download --quiet --compact --framework terraform -d terraform
checkov --skip-download --quiet --compact --framework dockerfile -f deploy/Dockerfile
# All together, as the cluster holds them: the doctor's Job and the sidecar example are covered by app's
# NetworkPolicy.
for k in "${kustomizations[@]}"; do cat "$work/$k.yaml"; echo "---"; done >"$work/cluster.yaml"
checkov --skip-download --quiet --compact --framework kubernetes -f "$work/cluster.yaml"

echo "--- hadolint"
hadolint deploy/Dockerfile

echo "--- task --list"
task --list >/dev/null

echo "--- the docs' YAML and TOML examples parse; the GitHub workflow asks for its OIDC token"
python3 - <<'PY'
import re, sys, tomllib, glob
import yaml  # PyYAML, installed with checkov
bad = []
for doc in sorted(glob.glob("docs/*.md")) + ["README.md"]:
    text = open(doc, encoding="utf-8").read()
    for lang, body in re.findall(r"^```(yaml|toml)\n(.*?)^```", text, re.S | re.M):
        try:
            parsed = yaml.safe_load(body) if lang == "yaml" else tomllib.loads(body)
        except Exception as err:  # noqa: BLE001 - report every block, then fail
            bad.append(f"{doc}: a {lang} block does not parse: {err}")
            continue
        if doc.endswith("github-actions.md") and lang == "yaml":
            if parsed.get("permissions", {}).get("id-token") != "write":
                bad.append(f"{doc}: the workflow lacks permissions: id-token: write")
            runs = [s.get("run", "") for j in parsed["jobs"].values() for s in j["steps"]]
            if not any("pgwi migrate up" in r for r in runs):
                bad.append(f"{doc}: the workflow does not run pgwi migrate up")
if bad:
    sys.exit("\n".join(bad))
print("docs' examples parse")
PY

echo "--- docs/aks.md walked offline"
bash deploy/ci/walk-docs.sh
echo "offline checks passed"
