#!/usr/bin/env bash
# Walks docs/aks.md offline: runs each command of its shell blocks, in order, in a copy of the repository, with
# stand-ins for terraform (no state until `tf:apply`, then the outputs below), az, docker and kubelogin, and
# with a kubectl that has no cluster: the real kubectl parses every call (with --dry-run=client where the
# command takes it; kustomizations are built, so a broken one fails) against an API server that refuses
# connections, and a command it rejects fails the walk. Where a script reads the cluster, the stand-in answers
# as a cluster where every Job completes. Also checks:
#   - the docs' shell blocks use `task` targets only, and mention every deployment task;
#   - every `kubectl` command quoted anywhere in the docs (README.md, ARCHITECTURE.md, docs/) parses;
#   - with no Terraform state, `task kube:values` stops and says the stack has not been applied;
#   - a missing or empty output, or an image the registry lacks, stops render-values.sh naming it, and the
#     previous azure.env is left as it was;
#   - `task deploy` applies only deploy/k8s/app, and deploy/k8s/bootstrap is applied by db:bootstrap alone;
#   - images are built for linux/amd64 and deployed by the digest of the tag that was pushed;
#   - every az call names the stack's subscription (the az stand-in refuses one that does not);
#   - docs/aks.md bootstraps the database before it deploys the CronJob;
#   - the image's tag follows what goes into the image only: editing the example files the docs tell users to
#     edit keeps it (and `task kube:values` still finds the pushed image), a change to the sources does not.
# Needs git, python3, kubectl and task. Usage: walk-docs.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
walk="$(mktemp -d)"
trap 'rm -rf "$walk"' EXIT
fail() {
  printf 'walk-docs.sh: FAILED: %s\n' "$*" >&2
  exit 1
}

# --- a copy of the repository (tracked and new files, as they are now), committed so the image tag is a sha
tree="$walk/repo"
mkdir -p "$tree"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [[ -e "$f" ]] && printf '%s\0' "$f"
done | tar --null -T - -cf -) | tar -xf - -C "$tree"
git -C "$tree" init -q
git -C "$tree" add -A
git -C "$tree" -c user.name=walk -c user.email=walk@localhost -c commit.gpgsign=false commit -qm walk --no-verify
sha="$(git -C "$tree" rev-parse --short=12 HEAD)"

# --- stand-ins
bin="$walk/bin"
state="$walk/state"
mkdir -p "$bin" "$state"
real_kubectl="$(command -v kubectl)"
export WALK_STATE="$state" WALK_REAL_KUBECTL="$real_kubectl"

# Terraform's outputs after apply. The namespaces and ServiceAccounts are not the defaults, so the walk also
# shows that Terraform's variables reach the manifests.
cat >"$state/outputs.applied" <<'EOF'
subscription_id=22222222-2222-2222-2222-222222222222
resource_group=rg-walk
aks_name=aks-walk
oidc_issuer_url=https://westeurope.oic.prod-aks.azure.com/00000000-0000-0000-0000-000000000000/11111111-1111-1111-1111-111111111111/
acr_login_server=crwalk123456.azurecr.io
acr_name=crwalk123456
postgres_host=psql-walk-123456.postgres.database.azure.com
postgres_subnet_cidr=10.8.2.0/24
postgres_database=app
app_identity_name=id-walk-app
app_client_id=00000000-0000-0000-0000-00000000000a
app_object_id=00000000-0000-0000-0000-00000000000b
admin_identity_name=id-walk-admin
admin_client_id=00000000-0000-0000-0000-00000000000c
k8s_namespace=walk-app
k8s_service_account=walk-writer
k8s_admin_namespace=walk-admin
k8s_admin_service_account=walk-dba
EOF

cat >"$bin/terraform" <<'EOF'
#!/usr/bin/env bash
# terraform with no cloud: init and plan are recorded, apply makes the outputs exist, output answers like
# terraform does (with no state: `{}` for -json, and an empty -raw with exit status 0).
set -euo pipefail
echo "terraform $*" >>"$WALK_STATE/calls"
args=()
for a in "$@"; do case "$a" in -chdir=*) dir="${a#-chdir=}" ;; -no-color) ;; *) args+=("$a") ;; esac; done
outputs="$WALK_STATE/outputs"
case "${args[0]:-}" in
  init | plan) ;;
  apply) [[ "${args[1]:-}" == tfplan ]] || { echo "fake terraform: apply without the saved plan" >&2; exit 1; }
    cp "$WALK_STATE/outputs.applied" "$outputs" ;;
  output)
    if [[ "${args[1]:-}" == -json ]]; then
      if [[ -s "$outputs" ]]; then echo '{"applied": {"value": true}}'; else echo '{}'; fi
      exit 0
    fi
    [[ "${args[1]:-}" == -raw ]] || { echo "fake terraform: unexpected: $*" >&2; exit 1; }
    name="${args[2]:?}"
    grep -q "^output \"$name\" " "${dir:-.}/outputs.tf" || { echo "fake terraform: $name is not an output in terraform/outputs.tf" >&2; exit 1; }
    if [[ ! -s "$outputs" ]]; then echo "Warning: No outputs found" >&2; exit 0; fi
    line="$(grep "^$name=" "$outputs")" || { printf '\nError: Output "%s" not found\n\nThe output variable requested could not be found in the state file.\n' "$name" >&2; exit 1; }
    printf '%s' "${line#*=}" ;;
  *) echo "fake terraform: unexpected: $*" >&2; exit 1 ;;
esac
EOF

cat >"$bin/docker" <<'EOF'
#!/usr/bin/env bash
# docker with no engine: records builds, tags and pushes; a build must name linux/amd64 (AKS's nodes).
set -euo pipefail
echo "docker $*" >>"$WALK_STATE/calls"
case "$1" in
  build)
    [[ " $* " == *" --platform linux/amd64 "* ]] || { echo "fake docker: build without --platform linux/amd64: $*" >&2; exit 1; }
    tag=""; prev=""
    for a in "$@"; do [[ "$prev" == -t ]] && tag="$a"; prev="$a"; done
    [[ -n "$tag" ]] || { echo "fake docker: build without -t" >&2; exit 1; }
    echo "$tag" >>"$WALK_STATE/images" ;;
  tag) grep -qxF "$2" "$WALK_STATE/images" || { echo "fake docker: no image $2" >&2; exit 1; }
    echo "$3" >>"$WALK_STATE/images" ;;
  push) grep -qxF "$2" "$WALK_STATE/images" || { echo "fake docker: no image $2" >&2; exit 1; }
    echo "${2#*/}" >>"$WALK_STATE/pushed" ;;
  *) echo "fake docker: unexpected: $*" >&2; exit 1 ;;
esac
EOF

cat >"$bin/az" <<'EOF'
#!/usr/bin/env bash
# az with no Azure: logins are recorded; `acr build` pushes; `acr repository show` knows only pushed images.
# Every call must name the stack's subscription: az's default may be another one (ResourceGroupNotFound).
set -euo pipefail
echo "az $*" >>"$WALK_STATE/calls"
subscription="$(sed -n 's/^subscription_id=//p' "$WALK_STATE/outputs.applied")"
[[ " $* " == *" --subscription $subscription "* ]] \
  || { echo "fake az: a call without --subscription $subscription (terraform output subscription_id): az $*" >&2; exit 1; }
case "$1 $2" in
  "acr login" | "aks get-credentials") ;;
  "acr build")
    [[ " $* " == *" --platform linux/amd64 "* ]] || { echo "fake az: acr build without --platform linux/amd64" >&2; exit 1; }
    prev=""; for a in "$@"; do [[ "$prev" == --image ]] && echo "$a" >>"$WALK_STATE/pushed"; prev="$a"; done ;;
  "acr repository")
    prev=""; image=""; for a in "$@"; do [[ "$prev" == --image ]] && image="$a"; prev="$a"; done
    if grep -qxF "$image" "$WALK_STATE/pushed" 2>/dev/null; then
      printf 'sha256:%s\n' "$(printf '%s' "$image" | git hash-object --stdin)$(printf '%s' "$image" | git hash-object --stdin | cut -c1-24)"
    else
      echo "ERROR: manifest unknown: $image" >&2; exit 1
    fi ;;
  *) echo "fake az: unexpected: $*" >&2; exit 1 ;;
esac
EOF

cat >"$bin/kubelogin" <<'EOF'
#!/usr/bin/env bash
echo "kubelogin $*" >>"$WALK_STATE/calls"
EOF

cat >"$state/kubeconfig" <<'EOF'
apiVersion: v1
kind: Config
clusters:
  - name: offline
    cluster: {server: "https://127.0.0.1:9"}
users:
  - name: offline
    user: {token: offline}
contexts:
  - name: offline
    context: {cluster: offline, user: offline}
current-context: offline
EOF

cat >"$bin/kubectl" <<'EOF'
#!/usr/bin/env bash
# kubectl with no cluster: see walk-docs.sh.
set -uo pipefail
echo "kubectl $*" >>"$WALK_STATE/calls"
args=("$@")
verb=""; jsonpath=""; skip=0; prev=""
for a in "$@"; do
  if ((skip)); then skip=0
  elif [[ -z "$verb" && "$a" =~ ^(-n|--namespace|--context|--cluster|--user|-s|--server)$ ]]; then skip=1
  elif [[ -z "$verb" && "$a" != -* ]]; then verb="$a"
  fi
  [[ "$prev" == -o && "$a" == jsonpath=* ]] && jsonpath="${a#jsonpath=}"
  [[ "$a" == -o=jsonpath=* || "$a" == --output=jsonpath=* ]] && jsonpath="${a#*jsonpath=}"
  prev="$a"
done
case "$verb" in
  create | apply | delete | run | patch | label | annotate | replace | scale | set | expose | autoscale) args+=(--dry-run=client) ;;
esac
export KUBECONFIG="$WALK_STATE/kubeconfig"
reject() { printf 'kubectl %s\n%s\n' "$*" "$1" >>"$WALK_STATE/rejected"; printf 'kubectl rejects it offline: %s\n' "$1" >&2; exit 1; }
if out="$("$WALK_REAL_KUBECTL" "${args[@]}" 2>&1)"; then
  printf '%s\n' "$out"
else
  grep -qE 'connection refused|was refused|Unable to connect to the server' <<<"$out" || reject "$out"
fi
# A JSONPath template is parsed only once objects come back; parse it against a local object.
if [[ -n "$jsonpath" ]]; then
  out="$("$WALK_REAL_KUBECTL" create configmap walk --dry-run=client -o "jsonpath=$jsonpath" 2>&1)" || reject "$out"
fi
# Answers where the scripts read the cluster: every Job completes.
if [[ "$verb" == get && " $* " == *" job "* ]]; then printf 'Complete '; fi
exit 0
EOF
chmod +x "$bin"/*
export PATH="$bin:$PATH"
: >"$state/calls"

# --- what the docs say to run
extract() { # FILE MODE: "blocks" (lines of sh blocks) or "spans" (inline code spans)
  python3 - "$1" "$2" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
if sys.argv[2] == "blocks":
    for block in re.findall(r"^```(?:sh|bash|shell)\n(.*?)^```", text, re.S | re.M):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                print(line)
else:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`\n]+)`", prose):
        print(span.strip())
PY
}
mapfile -t steps < <(extract "$tree/docs/aks.md" blocks)
((${#steps[@]})) || fail "no shell blocks in docs/aks.md"
for line in "${steps[@]}"; do
  case "$line" in
    "task "* | "cp "*) ;;
    *) fail "docs/aks.md runs '$line': the walk from an empty subscription uses task targets only" ;;
  esac
done
first_step() { # PREFIX: the index of the first step starting with it
  local i
  for i in "${!steps[@]}"; do [[ "${steps[i]}" == "$1"* ]] && { echo "$i"; return; }; done
  fail "docs/aks.md never runs '$1'"
}
(($(first_step "task db:bootstrap") < $(first_step "task deploy"))) \
  || fail "docs/aks.md deploys the CronJob before task db:bootstrap has created its role and database"
mapfile -t tasks < <(cd "$tree" && task --list-all --json | python3 -c 'import json,sys; print("\n".join(t["name"] for t in json.load(sys.stdin)["tasks"]))')
for t in "${tasks[@]}"; do
  # Developer tasks, not deployment steps.
  case "$t" in demo | test | lint | bench) continue ;; esac
  grep -qF "task $t" "$tree/docs/aks.md" || fail "docs/aks.md does not mention task $t"
done

run() { # LINE: runs it in the copy, output indented; returns its status
  echo "\$ $1"
  echo "### $1" >>"$state/calls"
  (cd "$tree" && bash -c "$1") 2>&1 | sed 's/^/    /'
  return "${PIPESTATUS[0]}"
}

echo "--- with no Terraform state, rendering stops and says why"
if out="$(run "task kube:values" 2>&1)"; then
  fail "task kube:values succeeded with no Terraform state: $out"
fi
grep -q "has not been applied yet" <<<"$out" || fail "no 'not applied yet' message: $out"
[[ ! -e "$tree/deploy/k8s/values/azure.env" ]] || fail "azure.env was written with no state"
echo "    stopped: $(grep -m 1 'tf-output.sh:' <<<"$out" | sed 's/^ *//')"

echo "--- docs/aks.md, step by step"
for line in "${steps[@]}"; do
  run "$line" || fail "'$line' failed"
done
echo "--- commands the docs mention in passing"
mapfile -t spans < <(extract "$tree/docs/aks.md" spans | awk '!seen[$0]++')
for span in "${spans[@]}"; do
  case "$span" in
    "task demo"* | "task test"* | "task lint"*) ;;
    "task "*) [[ " ${steps[*]} " == *" $span "* ]] || run "$span" || fail "'$span' failed" ;;
  esac
done
for doc in "$tree"/README.md "$tree"/ARCHITECTURE.md "$tree"/docs/*.md; do
  while IFS= read -r cmd; do
    [[ "$cmd" == kubectl\ * ]] || continue
    run "$cmd" || fail "${doc#"$tree"/}: '$cmd' is rejected by kubectl"
  done < <(extract "$doc" blocks; extract "$doc" spans)
done
[[ ! -s "$state/rejected" ]] || fail "kubectl rejected: $(cat "$state/rejected")"

echo "--- what the walk did"
calls_of() { awk -v step="### $1" '/^### /{on = ($0 == step)} on && !/^### /' "$state/calls"; }
calls_of "task deploy" | grep -qxF "kubectl apply -k deploy/k8s/app" || fail "task deploy did not apply deploy/k8s/app"
[[ "$(calls_of "task deploy" | grep -c '^kubectl apply')" == 1 ]] || fail "task deploy applies more than deploy/k8s/app: $(calls_of "task deploy")"
awk '/^### /{step = $0} /^kubectl apply -k deploy\/k8s\/bootstrap/ && step != "### task db:bootstrap" {print step; bad = 1} END {exit bad}' \
  "$state/calls" >/dev/null || fail "deploy/k8s/bootstrap applied outside task db:bootstrap"
calls_of "task db:bootstrap" | grep -qxF "kubectl -n walk-admin delete job pgwi-bootstrap --ignore-not-found" \
  || fail "task db:bootstrap does not delete the previous Job in the administrator's namespace"
calls_of "task doctor" | grep -qxF "kubectl apply -k deploy/k8s/doctor" || fail "task doctor did not apply deploy/k8s/doctor"
env_file="$tree/deploy/k8s/values/azure.env"
image="$(sed -n 's/^IMAGE=//p' "$env_file")"
[[ "$image" =~ ^crwalk123456\.azurecr\.io/pgwi:$sha@sha256:[0-9a-f]{64}$ ]] \
  || fail "azure.env's IMAGE is not the pushed tag $sha pinned by digest: $image"
grep -qxF "APP_NAMESPACE=walk-app" "$env_file" || fail "azure.env lacks Terraform's namespace"
"$real_kubectl" kustomize "$tree/deploy/k8s/app" >"$walk/app.yaml"
if ! grep -q "namespace: walk-app" "$walk/app.yaml" || grep -q "set-by-kustomize" "$walk/app.yaml"; then
  fail "deploy/k8s/app does not carry Terraform's values"
fi
echo "    deploy applied deploy/k8s/app only; db:bootstrap applied deploy/k8s/bootstrap; image $image"

echo "--- render-values.sh stops on a missing value and keeps the previous azure.env"
cp "$env_file" "$walk/azure.env.good"
render_fails() { # WHY EXPECTED [TAG]
  local why="$1" expected="$2" tag="${3:-$sha}" out
  if out="$(cd "$tree" && bash deploy/render-values.sh "$tag" deploy/k8s/values/azure.env 2>&1)"; then
    fail "render-values.sh succeeded with $why"
  fi
  grep -qF "$expected" <<<"$out" || fail "render-values.sh with $why does not say '$expected': $out"
  cmp -s "$env_file" "$walk/azure.env.good" || fail "render-values.sh with $why changed azure.env"
  echo "    $why: $(tail -n 2 <<<"$out" | head -n 1)"
}
cp "$state/outputs" "$walk/outputs.good"
grep -v '^postgres_subnet_cidr=' "$walk/outputs.good" >"$state/outputs"
render_fails "an output not in the state" "terraform output postgres_subnet_cidr is not in the state"
sed 's/^app_client_id=.*/app_client_id=/' "$walk/outputs.good" >"$state/outputs"
render_fails "an empty output" "terraform output app_client_id is empty"
cp "$walk/outputs.good" "$state/outputs"
render_fails "an image that was never pushed" "image pgwi:never-pushed is not in registry crwalk123456" never-pushed
echo "--- the image's tag follows what goes into the image only"
tag() { (cd "$tree" && bash deploy/image-tag.sh fallback); }
[[ "$(tag)" == "$sha" ]] || fail "the tag of the committed tree is $(tag), not $sha"
cp "$walk/azure.env.good" "$env_file"
echo "APP_IMAGE=crwalk123456.azurecr.io/orders:2.0.0@sha256:$(printf '%064d' 0)" >"$tree/deploy/k8s/proxy-sidecar/app.env"
printf '\n[aks.proxy]\nmax_clients = 10\n' >>"$tree/deploy/k8s/values/pgwi.toml"
echo "edited" >>"$tree/docs/aks.md"
[[ "$(tag)" == "$sha" ]] || fail "editing app.env, pgwi.toml or the docs changed the image's tag to $(tag)"
run "task kube:values" >/dev/null || fail "task kube:values no longer finds the pushed image after app.env and pgwi.toml were edited"
echo "    app.env, pgwi.toml and docs edited: tag $sha, task kube:values finds the pushed image"
for change in "core/Cargo.toml" "deploy/Dockerfile" "app/src/walk-new-file.rs"; do
  echo "# walk" >>"$tree/$change"
  dirty="$(tag)"
  [[ "$dirty" == "$sha-dirty-"???????? ]] || fail "a change to $change left the image's tag at $dirty"
  if run "task kube:values" >/dev/null 2>&1; then fail "task kube:values deployed the pushed image although $change changed"; fi
  git -C "$tree" checkout -q -- "$change" 2>/dev/null || rm -f "$tree/$change"
  echo "    $change changed: tag $dirty, which the registry does not have"
done
[[ "$(tag)" == "$sha" ]] || fail "the tag did not come back to $sha"
echo "walk passed"
