#!/usr/bin/env bash
# Builds a distroless-like base image from this machine's own files, for machines with no registry to pull
# gcr.io/distroless/cc from: the C runtime pgwi links against, CA certificates, and a `nonroot` user 65532.
# Usage: runtime-base.sh BINARY [IMAGE]   (default image: pgwi-ci-runtime:local). Reuses an existing image.
set -euo pipefail
binary="${1:?usage: runtime-base.sh BINARY [IMAGE]}"
image="${2:-pgwi-ci-runtime:local}"
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "runtime-base.sh: $image already present; reusing it"
  exit 0
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/usr/local/bin"
chmod 1777 "$root/tmp"
# The dynamic loader and every library the binary needs, at the same paths.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
tar -C "$root" -c . | docker import --change 'USER 65532:65532' - "$image" >/dev/null
echo "runtime-base.sh: built $image"
