#!/usr/bin/env bash
# Writes deploy/k8s/values/azure.env from `terraform output` and the registry: the only place Terraform's
# values enter the manifests. Every value is read and checked before anything is written; a missing output
# (no state, not applied yet) or an image the registry does not have stops it with a message naming which.
# The image is pinned by the digest the registry reports for pgwi:IMAGE_TAG, so what runs is what was pushed.
# Usage: render-values.sh IMAGE_TAG [FILE]   (FILE is replaced only on success; without it, stdout)
set -euo pipefail
tag="${1:?usage: render-values.sh IMAGE_TAG [FILE]}"
file="${2:-}"
here="$(dirname "${BASH_SOURCE[0]}")"

fail() {
  printf 'render-values.sh: %s\n' "$*" >&2
  exit 1
}

# KEY=terraform output, for every key of azure.env but IMAGE (app/tests/it/deploy.rs reads this table).
mapping=(
  APP_NAMESPACE=k8s_namespace
  APP_SERVICE_ACCOUNT=k8s_service_account
  APP_CLIENT_ID=app_client_id
  APP_OBJECT_ID=app_object_id
  ADMIN_NAMESPACE=k8s_admin_namespace
  ADMIN_SERVICE_ACCOUNT=k8s_admin_service_account
  ADMIN_CLIENT_ID=admin_client_id
  ADMIN_IDENTITY_NAME=admin_identity_name
  DBHOST=postgres_host
  DBNAME=postgres_database
  DBUSER=app_identity_name
  POSTGRES_SUBNET_CIDR=postgres_subnet_cidr
)

# tf-output.sh prints every value or, naming the missing output, nothing at all.
# The first three are not written: the subscription (every az call names it, whatever az's default) and the
# registry.
out="$(bash "$here/tf-output.sh" subscription_id acr_name acr_login_server "${mapping[@]#*=}")" \
  || fail "nothing written: a Terraform output is missing (above)"
values=()
while IFS= read -r line; do values+=("$line"); done <<<"$out" # not mapfile: macOS ships bash 3.2
((${#values[@]} == ${#mapping[@]} + 3)) || fail "expected $((${#mapping[@]} + 3)) values from tf-output.sh, got ${#values[@]}"
subscription="${values[0]}"
acr_name="${values[1]}"
acr_login_server="${values[2]}"

err="$(mktemp)"
trap 'rm -f "$err" "${tmp:-}"' EXIT
if ! digest="$(az acr repository show --subscription "$subscription" --name "$acr_name" --image "pgwi:$tag" --query digest --output tsv 2>"$err")"; then
  fail "nothing written: image pgwi:$tag is not in registry $acr_name of subscription $subscription ($(tail -n 1 "$err")): build and push it with the same TAG first (task image:build image:push, or task image:acr-build)"
fi
[[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] \
  || fail "nothing written: the registry gave no digest for pgwi:$tag (got '$digest')"

render() {
  printf 'IMAGE=%s/pgwi:%s@%s\n' "$acr_login_server" "$tag" "$digest"
  local i
  for i in "${!mapping[@]}"; do
    printf '%s=%s\n' "${mapping[i]%%=*}" "${values[i + 3]}"
  done
}

if [[ -z "$file" ]]; then
  render
else
  tmp="$(mktemp "$file.XXXXXX")"
  render >"$tmp"
  mv "$tmp" "$file"
fi
