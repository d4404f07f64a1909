#!/usr/bin/env bash
# Prints the named `terraform output` values of terraform/, one a line, only once every one of them has been
# read and found non-empty; otherwise prints nothing and exits 1 naming the first missing output and why.
# `terraform output -raw NAME` alone is not enough: with no state it warns and exits 0 with empty output.
# Usage: tf-output.sh NAME...
set -euo pipefail
(($#)) || { echo "usage: tf-output.sh NAME..." >&2; exit 2; }
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../terraform" && pwd)"
err="$(mktemp)"
trap 'rm -f "$err"' EXIT

fail() {
  printf 'tf-output.sh: %s\n' "$*" >&2
  exit 1
}
# Terraform's own reason: its "Error: ..." line, else its last non-blank line.
reason() {
  grep -m 1 '^[│ ]*Error: ' "$err" | sed 's/^[│ ]*//' || grep -v '^[[:space:]│╷╵]*$' "$err" | tail -n 1
}

if ! all="$(terraform -chdir="$dir" output -no-color -json 2>"$err")"; then
  fail "terraform output $1: terraform failed in terraform/: $(reason) (run task tf:init first)"
fi
if [[ "$(tr -d '[:space:]' <<<"$all")" == "{}" ]]; then
  fail "terraform output $1: there is no Terraform state with outputs in terraform/: the stack has not been applied yet (task tf:init, task tf:plan, task tf:apply)"
fi

values=()
for name in "$@"; do
  if ! value="$(terraform -chdir="$dir" output -no-color -raw "$name" 2>"$err")"; then
    why="$(reason)"
    case "$why" in
      *"not found"*) fail "terraform output $name is not in the state: it is null, or was added to terraform/outputs.tf after the last apply (task tf:plan, task tf:apply)" ;;
      *) fail "terraform output $name: ${why:-terraform failed}" ;;
    esac
  fi
  [[ -n "$value" ]] || fail "terraform output $name is empty in the state (task tf:plan, task tf:apply)"
  [[ "$value" != *$'\n'* ]] || fail "terraform output $name has more than one line"
  values+=("$value")
done
printf '%s\n' "${values[@]}"
