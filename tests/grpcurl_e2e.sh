#!/usr/bin/env bash
# End-to-end check with the real grpcurl (1.8, which speaks reflection v1alpha only):
# `mesh serve all` on free ports; on every gRPC port `grpcurl list` shows the service plus health
# and reflection, `describe` works, and grpc.health.v1.Health/Check answers SERVING; then SIGTERM
# must stop the process with exit code 0.
# Usage: tests/grpcurl_e2e.sh [path/to/mesh]
set -euo pipefail
MESH="${1:-${CARGO_TARGET_DIR:-target}/debug/mesh}"
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

fail() { echo "grpcurl e2e: FAIL: $*" >&2; [ -f "$work/err" ] && tail -20 "$work/err" >&2; exit 1; }

# Every target on port 0 (any free port); the `ready` lines say where each landed.
envs=(MESH_ADMIN_PORT=0 "MESH_DATA_DIR=$work/data")
for name in $("$MESH" modules --json | python3 -c 'import json,sys; print(" ".join(m["name"] for m in json.load(sys.stdin)))'); do
  var="MESH_$(echo "$name" | tr 'a-z-' 'A-Z_')_PORT"
  envs+=("$var=0")
done
env "${envs[@]}" "$MESH" serve all >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 1 300); do
  grep -q '^ready  admin' "$work/out" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || fail "mesh exited before it was ready"
  sleep 0.1
done
grep -q '^ready  admin' "$work/out" || fail "mesh was not ready within 30 s"

checked=0
while read -r _ name url _; do
  case "$url" in grpc://*) ;; *) continue ;; esac
  addr=${url#grpc://}
  services=$(grpcurl -plaintext "$addr" list) || fail "$name: grpcurl list"
  for want in grpc.health.v1.Health grpc.reflection.v1alpha.ServerReflection grpc.reflection.v1.ServerReflection; do
    grep -qx "$want" <<<"$services" || fail "$name ($addr) does not list $want: $services"
  done
  own=$(grep -v '^grpc\.' <<<"$services" | head -1)
  [ -n "$own" ] || fail "$name lists no service of its own: $services"
  grpcurl -plaintext "$addr" describe "$own" >/dev/null || fail "$name: describe $own"
  health=$(grpcurl -plaintext "$addr" grpc.health.v1.Health/Check) || fail "$name: health check"
  grep -q '"status": "SERVING"' <<<"$health" || fail "$name: health says $health"
  printf '  %-13s %-22s %s\n' "$name" "$addr" "$own"
  checked=$((checked + 1))
done <"$work/out"
[ "$checked" -ge 12 ] || fail "only $checked gRPC ports checked"

kill -TERM "$pid"
code=0
wait "$pid" || code=$?
pid=""
[ "$code" -eq 0 ] || fail "mesh exited with $code after SIGTERM"
echo "grpcurl: $checked passed, 0 failed"
