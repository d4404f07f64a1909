#!/usr/bin/env bash
# Prints the image's tag: the commit (12 hex digits) or, when what goes into the image differs from the
# commit, the commit plus "-dirty-" and a hash of those differences (tracked changes and new files). What goes
# into the image is INPUTS: deploy/Dockerfile, .dockerignore and the build context the Dockerfile copies
# (app/tests/it/deploy.rs checks the list against its COPY lines). Anything else — the manifests, their
# values (deploy/k8s/values/pgwi.toml, deploy/k8s/proxy-sidecar/app.env), docs — leaves the tag as it is:
# the image would be the same. Outside a git checkout it prints FALLBACK (the crate version).
# Usage: image-tag.sh FALLBACK
set -euo pipefail
fallback="${1:?usage: image-tag.sh FALLBACK}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
inputs=(deploy/Dockerfile .dockerignore Cargo.toml Cargo.lock credentials core app testsupport)

if ! rev="$(git rev-parse --short=12 HEAD 2>/dev/null)"; then
  echo "$fallback"
  exit 0
fi
changes() {
  git diff HEAD -- "${inputs[@]}"
  git ls-files -z --others --exclude-standard -- "${inputs[@]}" | while IFS= read -r -d '' f; do
    printf 'new %s %s\n' "$(git hash-object -- "$f")" "$f"
  done
}
diff="$(changes)"
if [[ -z "$diff" ]]; then
  echo "$rev"
else
  echo "$rev-dirty-$(printf '%s\n' "$diff" | git hash-object --stdin | cut -c1-8)"
fi
