#!/usr/bin/env bash
# Builds the local PostgreSQL test image for machines whose Docker has no registry to pull from.
#
# A Debian root filesystem with PostgreSQL (mmdebstrap, using this machine's own apt configuration for its
# mirror), imported with `docker import`, plus an entrypoint that behaves like the official image's:
# it honours POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB, runs /docker-entrypoint-initdb.d/*.sh and *.sql
# at first start, and reports readiness the same way (temporary server on stdout, final server on stderr),
# so pgwi-testsupport's container backend works with either image. It also holds what the bench's token
# checking needs: PostgreSQL built with PAM, pam_exec.so from libpam-modules, and the compiled token checker
# `pgwi-token-check` (testsupport/token-check, built here with cargo's release profile for this machine, whose
# Debian suite the image shares) at /usr/local/bin, which judges a login for about what scram costs. Perl with
# Digest::SHA, JSON::PP and MIME::Base64 stays for the Perl checker, which testsupport falls back to in an
# image without the compiled one. The tag marks what an image holds (`-pam`: token checking; `-pam2`: the
# compiled checker), so an older image is never reused by mistake.
#
# Usage: build.sh [IMAGE]   (default: pgwi-test-postgres:15-pam2). Reuses the image when it already exists;
# set PGWI_REBUILD_IMAGE=1 to force a rebuild.
set -euo pipefail

image="${1:-pgwi-test-postgres:15-pam2}"
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null # this machine's os-release
suite="${PGWI_IMAGE_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}"

if [[ "${PGWI_REBUILD_IMAGE:-0}" != 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "build.sh: $image already present; reusing it"
  exit 0
fi

if ! command -v mmdebstrap >/dev/null; then
  echo "build.sh: installing mmdebstrap"
  apt-get install -y -q mmdebstrap >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "build.sh: building the token checker (cargo build --release -p pgwi-token-check)"
# The path cargo reports, wherever CARGO_TARGET_DIR or the configuration puts it.
checker="$(cd "$here/../../.." && cargo build --release --locked --quiet -p pgwi-token-check \
  --message-format=json-render-diagnostics |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "pgwi-token-check" and m.get("executable"):
        print(m["executable"])')"
[[ -x "$checker" ]] || { echo "build.sh: cargo reported no pgwi-token-check executable"; exit 1; }
cp "$checker" "$work/pgwi-token-check"

echo "build.sh: building a $suite root filesystem with PostgreSQL (takes about half a minute)"
# No mirror argument: mmdebstrap takes the mirror from this machine's apt sources.
# shellcheck disable=SC2016 # the hooks' $1 (the root being built) is expanded by mmdebstrap, not here
mmdebstrap --quiet --variant=apt --include=postgresql,ca-certificates,perl,libpam-modules \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --essential-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d" && echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.d/pgwi.conf"' \
  --customize-hook="upload $here/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh" \
  --customize-hook='chmod 755 "$1/usr/local/bin/docker-entrypoint.sh"' \
  --customize-hook="upload $work/pgwi-token-check /usr/local/bin/pgwi-token-check" \
  --customize-hook='chmod 755 "$1/usr/local/bin/pgwi-token-check"' \
  --customize-hook='mkdir -p "$1/docker-entrypoint-initdb.d" "$1/var/lib/postgresql/data" "$1/var/run/postgresql"' \
  --customize-hook='chroot "$1" chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql' \
  --customize-hook='rm -rf "$1/var/lib/apt/lists/"* "$1/var/cache/apt/"*' \
  "$suite" "$work/rootfs.tar"

echo "build.sh: importing as $image"
docker import \
  --change 'ENV PGDATA=/var/lib/postgresql/data' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'EXPOSE 5432' \
  --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
  --change 'CMD ["postgres"]' \
  "$work/rootfs.tar" "$image" >/dev/null
docker image ls "$image"
