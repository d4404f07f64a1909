#!/usr/bin/env bash
# The deployment's offline checks: shellcheck on every shell script, Terraform formatting, the Terraform
# variables' checks planned with no provider (terraform/checks.tf: each refuses what it should), each kustomization
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

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "--- terraform: the variables' checks, planned with no provider"
# variables.tf and checks.tf depend on no provider (checks.tf's resource is Terraform's built-in
# terraform_data), so `terraform plan` runs them here as it would before creating anything in Azure.
tfchecks="$work/tf-checks"
mkdir -p "$tfchecks"
cp terraform/variables.tf terraform/checks.tf "$tfchecks/"
terraform -chdir="$tfchecks" init -input=false -no-color >"$work/tf-init.log" 2>&1 || { cat "$work/tf-init.log"; exit 1; }
tf_plan() { # EXPECTED ("ok" or a part of the error) VAR=VALUE...
  local expected="$1" out args=(-var subscription_id=00000000-0000-0000-0000-000000000000) a
  shift
  for a in "$@"; do args+=(-var "$a"); done
  if out="$(terraform -chdir="$tfchecks" plan -input=false -no-color -lock=false "${args[@]}" 2>&1)"; then
    [[ "$expected" == ok ]] || { echo "terraform plan with $* passed; expected: $expected"; exit 1; }
  else
    [[ "$expected" != ok ]] || { echo "terraform plan with $* failed:"; echo "$out"; exit 1; }
    # Terraform wraps its messages: compare with the line breaks as spaces.
    grep -qF "$expected" <<<"$(tr '\n' ' ' <<<"$out" | tr -s ' ')" \
      || { echo "terraform plan with $* failed without saying '$expected':"; echo "$out"; exit 1; }
  fi
  echo "${*:-defaults}: $expected"
}
ranges='aks_api_authorized_ip_ranges=["203.0.113.10/32"]'
key='bastion_ssh_public_key=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkPg8xGGQ5H1Pq0CjQ2b0TfWJdPpL3h5e7VQ2Xbq0vZ you@host'
tf_plan "aks_api_authorized_ip_ranges is empty, which would open the AKS API server"
tf_plan ok "$ranges"
tf_plan ok "aks_api_open_to_internet=true"
tf_plan "aks_api_authorized_ip_ranges is empty" "$ranges" "aks_api_open_to_internet=true"
tf_plan "not 0.0.0.0/0" 'aks_api_authorized_ip_ranges=["0.0.0.0/0"]'
tf_plan "enable_bastion needs bastion_ssh_public_key" "$ranges" "enable_bastion=true"
tf_plan "enable_bastion needs bastion_ssh_public_key" "$ranges" "enable_bastion=true" "bastion_ssh_public_key=AAAA you@host"
tf_plan ok "$ranges" "enable_bastion=true" "$key"
tf_plan ok "$ranges" "postgres_zone=" "postgres_geo_redundant_backup=false"
tf_plan "postgres_zone must be" "$ranges" "postgres_zone=4"

echo "--- kustomize render (example values)"
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
# All together, as the cluster holds them: the doctor's Job is covered by app's NetworkPolicy (it carries
# app.kubernetes.io/part-of: pgwi), the sidecar example by its own.
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
        # The workflow (a mapping with jobs); the other YAML blocks there are steps to add to it.
        if doc.endswith("github-actions.md") and lang == "yaml" and isinstance(parsed, dict) and "jobs" in parsed:
            if parsed.get("permissions", {}).get("id-token") != "write":
                bad.append(f"{doc}: the workflow lacks permissions: id-token: write")
            runs = [s.get("run", "") for j in parsed["jobs"].values() for s in j["steps"]]
            if not any("pgwi migrate up" in r for r in runs):
                bad.append(f"{doc}: the workflow does not run pgwi migrate up")
workflows = sum(
    1
    for body in re.findall(r"^```yaml\n(.*?)^```", open("docs/github-actions.md", encoding="utf-8").read(), re.S | re.M)
    if isinstance(yaml.safe_load(body), dict) and "jobs" in yaml.safe_load(body)
)
if workflows != 1:
    bad.append(f"docs/github-actions.md: {workflows} workflows, expected the one")
if bad:
    sys.exit("\n".join(bad))
print("docs' examples parse")
PY

echo "--- docs/aks.md walked offline"
bash deploy/ci/walk-docs.sh
echo "offline checks passed"
