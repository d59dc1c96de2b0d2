#!/usr/bin/env bash
# End-to-end check with the real grpcurl (1.8, which speaks reflection v1alpha only):
# `mesh serve all` on free ports; on every gRPC port `grpcurl list` shows the service plus health
# and reflection, `describe` works, and grpc.health.v1.Health/Check answers SERVING; an
# independent reflection client (gRPC Python's grpcio-reflection, tests/reflection_client.py)
# resolves every listed service on every port (the edge's included), on v1 and v1alpha; then
# SIGTERM must stop the process with exit code 0.
# With MESH_E2E_MTLS=1 the same run goes over mTLS (docs/security.md): `mesh certs` writes a CA
# and certificates, every gRPC port but the edge's (public, plaintext) requires a client
# certificate; grpcurl calls them with -cacert/-cert/-key, a plaintext call and a call without a
# certificate must fail on each, and the saga walkthrough runs service to service over mTLS.
# Usage: [MESH_E2E_MTLS=1] tests/grpcurl_e2e.sh [path/to/mesh]
set -euo pipefail
MESH="${1:-${CARGO_TARGET_DIR:-target}/debug/mesh}"
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

fail() { echo "grpcurl e2e: FAIL: $*" >&2; [ -f "$work/err" ] && tail -20 "$work/err" >&2; exit 1; }

# Every target on port 0 (any free port); the `ready` lines say where each landed.
envs=(MESH_ADMIN_PORT=0 "MESH_DATA_DIR=$work/data" MESH_AUTH_BOOTSTRAP_ADMIN_EMAIL=admin@example.com MESH_SERVICE_CLIENT_SECRET=e2e-secret)
for name in $("$MESH" modules --json | python3 -c 'import json,sys; print(" ".join(m["name"] for m in json.load(sys.stdin)))'); do
  var="MESH_$(echo "$name" | tr 'a-z-' 'A-Z_')_PORT"
  envs+=("$var=0")
done
MTLS="${MESH_E2E_MTLS:-0}"
G=(-plaintext)
if [ "$MTLS" = 1 ]; then
  "$MESH" certs --out "$work/certs" >/dev/null || fail "mesh certs"
  c="$work/certs"
  envs+=("MESH_TLS_CERT=$c/all.pem" "MESH_TLS_KEY=$c/all.key" "MESH_TLS_CA=$c/ca.pem")
  G=(-cacert "$c/ca.pem" -cert "$c/all.pem" -key "$c/all.key")
fi
env "${envs[@]}" "$MESH" serve all >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 1 300); do
  grep -q '^ready  admin' "$work/out" 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || fail "mesh exited before it was ready"
  sleep 0.1
done
grep -q '^ready  admin' "$work/out" || fail "mesh was not ready within 30 s"

checked=0
while read -r _ name url mark; do
  case "$url" in grpc://*) ;; *) continue ;; esac
  addr=${url#grpc://}
  g=(-plaintext)
  if [ "$mark" = "(mTLS)" ]; then
    g=("${G[@]}")
    grpcurl -plaintext -max-time 2 "$addr" list >/dev/null 2>&1 && fail "$name: a plaintext call was answered"
    grpcurl -cacert "$c/ca.pem" -max-time 2 "$addr" list >/dev/null 2>&1 \
      && fail "$name: a call without a client certificate was answered"
  elif [ "$MTLS" = 1 ] && [ "$name" != edge ]; then
    fail "$name is not serving mTLS: $url $mark"
  fi
  services=$(grpcurl "${g[@]}" "$addr" list) || fail "$name: grpcurl list"
  for want in grpc.health.v1.Health grpc.reflection.v1alpha.ServerReflection grpc.reflection.v1.ServerReflection; do
    grep -qx "$want" <<<"$services" || fail "$name ($addr) does not list $want: $services"
  done
  own=$(grep -v '^grpc\.' <<<"$services" | head -1)
  [ -n "$own" ] || fail "$name lists no service of its own: $services"
  grpcurl "${g[@]}" "$addr" describe "$own" >/dev/null || fail "$name: describe $own"
  health=$(grpcurl "${g[@]}" "$addr" grpc.health.v1.Health/Check) || fail "$name: health check"
  grep -q '"status": "SERVING"' <<<"$health" || fail "$name: health says $health"
  printf '  %-13s %-22s %s %s\n' "$name" "$addr" "$own" "$mark"
  checked=$((checked + 1))
done <"$work/out"
[ "$checked" -ge 12 ] || fail "only $checked gRPC ports checked"

# What Python's reflection client, Postman and grpcui do: list, then ask for each service's file.
# (Over mTLS only the edge's plaintext port; the others were checked with grpcurl above.)
mapfile -t grpc_addrs < <(awk '$1 == "ready" && $3 ~ /^grpc:\/\// && $4 != "(mTLS)" { sub("grpc://", "", $3); print $3 }' "$work/out")
python3 "$(dirname "$0")/reflection_client.py" "${grpc_addrs[@]}" || fail "reflection with grpcio-reflection"

# The README's saga walkthrough, with grpcurl: a good card confirms, a declining card cancels and
# the stock comes back.
addr_of() { awk -v n="$1" '$1 == "ready" && $2 == n { sub("grpc://", "", $3); print $3 }' "$work/out"; }
json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {"d": d}))' "$1"; }
AUTH=$(addr_of auth); PRODUCT_ADDR=$(addr_of product); INVENTORY=$(addr_of inventory); ORDER=$(addr_of order)
pw='"password":"correct horse battery"'
grpcurl "${G[@]}" -d "{\"email\":\"admin@example.com\",$pw}" "$AUTH" auth.v1.AuthService/SignUp >/dev/null \
  || fail "admin sign-up"
TOKEN=$(grpcurl "${G[@]}" -d "{\"email\":\"admin@example.com\",$pw}" "$AUTH" auth.v1.AuthService/Login \
  | json 'd["tokens"]["accessToken"]') || fail "admin login"
PRODUCT=$(grpcurl "${G[@]}" -H "authorization: Bearer $TOKEN" \
  -d '{"product":{"sku":"COLA-033","name":"Cola 0.33 l","price":{"currencyCode":"EUR","amountMinor":250},"active":true}}' \
  "$PRODUCT_ADDR" product.v1.ProductService/CreateProduct | json 'd["product"]["id"]') || fail "create product"
grpcurl "${G[@]}" -H "authorization: Bearer $TOKEN" \
  -d "{\"locationId\":\"default\",\"productId\":\"$PRODUCT\",\"delta\":24,\"reason\":\"ADJUSTMENT_REASON_RESTOCK\"}" \
  "$INVENTORY" inventory.v1.InventoryService/AdjustStock >/dev/null || fail "add stock"
CUSTOMER=$(grpcurl "${G[@]}" -d "{\"email\":\"ada@example.com\",$pw}" "$AUTH" auth.v1.AuthService/SignUp \
  | json 'd["tokens"]["accessToken"]') || fail "customer sign-up"
place() {
  grpcurl "${G[@]}" -H "authorization: Bearer $CUSTOMER" -d "{\"idempotencyKey\":\"$1\",
    \"lines\":[{\"productId\":\"$PRODUCT\",\"quantity\":2}],
    \"shippingAddress\":{\"recipientName\":\"Ada\",\"addressLines\":[\"1 Main St\"],\"regionCode\":\"DE\"},
    \"paymentMethod\":{\"card\":{\"number\":\"$2\",\"expiry\":\"12/39\",\"cvc\":\"123\"}}}" \
    "$ORDER" order.v1.OrderService/PlaceOrder | json 'd["order"]["id"]'
}
final_status() {
  for _ in $(seq 1 100); do
    st=$(grpcurl "${G[@]}" -H "authorization: Bearer $CUSTOMER" -d "{\"id\":\"$1\"}" \
      "$ORDER" order.v1.OrderService/GetOrder | json 'd["order"]["status"]')
    case "$st" in ORDER_STATUS_CONFIRMED|ORDER_STATUS_CANCELLED) echo "$st"; return ;; esac
    sleep 0.1
  done
  echo "still $st after 10 s"
}
OK=$(place first-order 4242424242424242) || fail "place an order"
[ "$(final_status "$OK")" = ORDER_STATUS_CONFIRMED ] || fail "order $OK was not confirmed"
[ "$(place first-order 4242424242424242)" = "$OK" ] || fail "the same idempotency key made a second order"
DECLINED=$(place second-order 4000000000000002) || fail "place the declined order"
[ "$(final_status "$DECLINED")" = ORDER_STATUS_CANCELLED ] || fail "order $DECLINED (declined card) was not cancelled"
stock=""
for _ in $(seq 1 100); do
  stock=$(grpcurl "${G[@]}" -H "authorization: Bearer $TOKEN" \
    -d "{\"locationId\":\"default\",\"productId\":\"$PRODUCT\"}" "$INVENTORY" inventory.v1.InventoryService/GetStock \
    | json '(d["stock"].get("onHand"), d["stock"].get("reserved", "0"))')
  [ "$stock" = "('22', '0')" ] && break
  sleep 0.1
done
[ "$stock" = "('22', '0')" ] || fail "stock after one sale and one release is $stock, expected 22 on hand, 0 reserved"
# The edge (plaintext, public) calls product over mTLS when it is on.
EDGE=$(addr_of edge)
rest=$(curl -s -o /dev/null -w '%{http_code}' "http://$EDGE/v1/products/$PRODUCT") || fail "REST through the edge"
[ "$rest" = 200 ] || fail "GET /v1/products/$PRODUCT through the edge answered $rest"
echo "  saga: confirmed $OK, cancelled $DECLINED (declined card), stock 22 on hand, 0 reserved"

kill -TERM "$pid"
code=0
wait "$pid" || code=$?
pid=""
[ "$code" -eq 0 ] || fail "mesh exited with $code after SIGTERM"
echo "grpcurl$([ "$MTLS" = 1 ] && echo " (mTLS)"): $checked ports and the saga walkthrough passed, 0 failed"
