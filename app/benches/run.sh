#!/usr/bin/env bash
# `task bench`: issue #10's figures on this machine, in one go, from a fresh machine of this kind. Installs what
# is missing (psql, Debian's python3-psycopg2, the test image's tools), starts Docker, builds the test bench's
# PostgreSQL image and the bench's variant of it (max_connections = 300), builds the release `pgwi`, runs the
# job bench (a, e), the pool bench (b, c, f), the criterion cache bench (d), the proxy bench (g), measures the
# footprint (e) and prints one table (app/benches/report.py), also written to $CARGO_TARGET_DIR/bench/table.md (default target/),
# and draws the growth and job pictures next to it (app/benches/plot.py: growth-connections.png, growth-workers.png,
# job-wall.png).
# Environment: PGWI_BENCH_RUNS (paired job runs, default 15), PGWI_BENCH_ROTATION_SECS (figure c, default
# 60), PGWI_BENCH_GROWTH_SECS (each other worker count of figure f, default 15), PGWI_BENCH_PROXY_ROUNDS (figure
# g, default 5). BENCHMARKS.md explains.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { printf '\n=== %s\n' "$*"; }
started=$(date +%s)
target="${CARGO_TARGET_DIR:-$PWD/target}"
out="$target/bench"
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"

step "system packages"
missing=()
command -v psql >/dev/null || missing+=(postgresql-client)    # the baseline of figure a
command -v pgbench >/dev/null || missing+=(postgresql)        # figure g (Debian ships pgbench with the server)
/usr/bin/python3 -c 'import psycopg2' 2>/dev/null || missing+=(python3-psycopg2)   # the original demo's job
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)    # builds the test image's root filesystem
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null || missing+=(python3-matplotlib)   # the pictures (plot.py)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
else
  echo "all present"
fi

step "docker"
if ! docker info >/dev/null 2>&1; then
  echo "the Docker engine is not answering; trying to start it"
  (service docker start || dockerd >/tmp/dockerd.log 2>&1 &) || true
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker version --format 'engine {{.Server.Version}}'

step "PostgreSQL images (the test bench's, and the bench's with max_connections = 300)"
bash testsupport/images/postgres/build.sh pgwi-test-postgres:15-pam2
DOCKER_BUILDKIT=0 docker build --quiet --build-arg BASE=pgwi-test-postgres:15-pam2 \
  -t pgwi-bench-postgres:15-pam2 testsupport/images/postgres-bench >/dev/null
echo "pgwi-bench-postgres:15-pam2 built"
export PGWI_TEST_POSTGRES=container PGWI_TEST_POSTGRES_IMAGE=pgwi-bench-postgres:15-pam2
export PGWI_BENCH_RESULTS="$results"
# Each bench removes its own server's container when it exits (pgwi-testsupport); nothing else is touched.

step "release build"
cargo build --release --locked -p pgwi --bin pgwi
# A copy: building the benches writes target/release/pgwi again, with the dev-dependencies' features.
binary="$out/pgwi"
cp "$target/release/pgwi" "$binary"
export PGWI_BENCH_PGWI="$binary"

step "bench builds"
# One feature resolution for all four (--workspace), so no bench rebuilds what another built.
cargo bench --locked --workspace --bench '*' --no-run

step "a, e: the job vs psql and the original Python job"
cargo bench --locked --workspace --bench job

step "b, c, f: workload identity vs a static password through one pool"
cargo bench --locked --workspace --bench pool

step "d: token on a cache hit (criterion)"
rm -rf "$out/criterion"
CRITERION_HOME="$out/criterion" cargo bench --locked --workspace --bench token_cache

step "g: pgwi proxy vs direct (connect latency, pgbench -S throughput at 4 and 16 clients)"
# Against a native cluster: Docker's userland proxy on a container's published port would slow the direct
# path and hide the proxy's own cost.
PGWI_TEST_POSTGRES=native cargo bench --locked --workspace --bench proxy

step "e: footprint"
row() { # section figure pgwi baseline ratio target met note
  python3 -c 'import json, sys
s, f, p, b, r, t, m, n = sys.argv[1:]
print(json.dumps({"section": s, "figure": f, "pgwi": p, "baseline": b, "ratio": float(r) if r else None,
                  "target": t, "met": {"true": True, "false": False}.get(m), "note": n or None}))' "$@" >>"$results"
}
mb() { python3 -c 'import sys; print(f"{int(sys.argv[1]) / 1e6:.1f} MB")' "$1"; }
size=$(stat -c %s "$binary")
row e "release binary size of pgwi ([profile.release] in Cargo.toml)" "$(mb "$size")" "-" "" "-" "" ""
bash deploy/ci/runtime-base.sh "$binary" pgwi-ci-runtime:local
context="$(mktemp -d)"
mkdir -p "$context/target/release"
cp "$binary" "$context/target/release/pgwi"
DOCKER_BUILDKIT=0 docker build --quiet -f deploy/Dockerfile --target runtime-prebuilt \
  --build-arg RUNTIME_IMAGE=pgwi-ci-runtime:local -t pgwi:bench "$context" >/dev/null
rm -rf "$context"
image=$(docker image inspect -f '{{.Size}}' pgwi:bench)
base=$(docker image inspect -f '{{.Size}}' pgwi-ci-runtime:local)
met=$([[ "$image" -lt 40000000 ]] && echo true || echo false)
row e "runtime image pgwi:bench (deploy/Dockerfile runtime-prebuilt) vs its base alone" "$(mb "$image")" "$(mb "$base")" \
  "$(python3 -c "print($image / $base)")" "< 40 MB" "$met" \
  "the base is deploy/ci/runtime-base.sh's distroless-like image made from this machine's files; the real 'runtime' target (gcr.io/distroless/cc-debian12) cannot be built here: no registry"

step "the table"
python3 app/benches/report.py "$results" "$out/criterion" "$out/table.md"

step "the pictures"
/usr/bin/python3 app/benches/plot.py "$results" "$out"
echo
echo "task bench took $(( $(date +%s) - started ))s; table in $out/table.md, pictures in $out/*.png"
