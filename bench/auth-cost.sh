#!/usr/bin/env bash
# The cost of authentication per request, over HTTP with wrk against a release server on the embedded default:
# the same request with no credential (no auth work), with a JWT and with an API key, and the hot workflow read
# with each credential. Usage: bench/auth-cost.sh [seconds per run, default 10]
# BIN=/path/to/taskorch measures that binary instead of building this checkout's (for side-by-side runs).
# TASKORCH_DATABASE_URL, TASKORCH_REDIS_URL, TASKORCH_AMQP_URL in the environment run the server on those instead.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
  cargo build --release -q --bin taskorch
  BIN=$(realpath "${CARGO_TARGET_DIR:-target}/release/taskorch")
fi
DIR=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
PASS=bench-admin-password
(cd "$DIR" && TASKORCH_LISTEN=127.0.0.1:0 TASKORCH_LOG=warn TASKORCH_ADMIN_PASSWORD=$PASS \
  TASKORCH_RATE_LIMITS=list=0,read=0,write=0,subscribe=0,login=0 exec "$BIN" > "$DIR/out" 2>&1) &
PID=$!
for _ in $(seq 100); do grep -q listening "$DIR/out" 2>/dev/null && break; sleep 0.1; done
URL=$(grep -o 'http://[^ ]*/graphql' "$DIR/out" | head -1)
gql() { curl -s "$URL" -H 'content-type: application/json' ${2:+-H "authorization: Bearer $2"} -d "$1"; }
field() { sed "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/"; }
JWT=$(gql '{"query":"mutation { login(email: \"admin@taskorch.local\", password: \"'$PASS'\") { accessToken } }"}' | field accessToken)
KEY=$(gql '{"query":"mutation { createApiKey(name: \"bench\", role: VIEWER) { secret } }"}' "$JWT" | field secret)
WF=$(gql '{"query":"mutation { submitWorkflow(input: { name: \"hot\", tasks: [{ key: \"a\", kind: \"noop\" }, { key: \"b\", kind: \"noop\", dependsOn: [\"a\"] }, { key: \"c\", kind: \"noop\", dependsOn: [\"b\"] }] }) { id } }"}' "$JWT" | field id)
run() { # name, body, credential
  {
    echo 'wrk.method = "POST"'
    printf 'wrk.body = [[%s]]\n' "$2"
    echo 'wrk.headers["Content-Type"] = "application/json"'
    if [ -n "$3" ]; then printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$3"; fi
  } > "$DIR/req.lua"
  local rps
  local out
  out=$(wrk -t1 -c32 -d"${SECS}s" -s "$DIR/req.lua" "$URL")
  if echo "$out" | grep -q "Non-2xx"; then echo "$1: non-2xx answers: $out" >&2; exit 1; fi
  rps=$(echo "$out" | awk '/Requests\/sec/ { print $2 }')
  printf '%-44s %10.0f req/s  %7.1f µs/req\n' "$1" "$rps" "$(echo "1000000 / $rps" | bc -l)"
}
# The hot read with a new document every request (a counter in a comment): every request misses the kept answers.
run_miss() { # name, credential
  cat > "$DIR/miss.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  local body = '{"query":"query(\$id: ID!) { workflow(id: \$id) { status tasks { key status } } } #' .. n .. '","variables":{"id":"$WF"}}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer $2"}, body)
end
LUA
  local out rps
  out=$(wrk -t1 -c32 -d"${SECS}s" -s "$DIR/miss.lua" "$URL")
  if echo "$out" | grep -q "Non-2xx"; then echo "$1: non-2xx answers: $out" >&2; exit 1; fi
  rps=$(echo "$out" | awk '/Requests\/sec/ { print $2 }')
  printf '%-44s %10.0f req/s  %7.1f µs/req\n' "$1" "$rps" "$(echo "1000000 / $rps" | bc -l)"
}
TYPENAME='{"query":"{ __typename }"}'
HOT='{"query":"query($id: ID!) { workflow(id: $id) { status tasks { key status } } }","variables":{"id":"'$WF'"}}'
BACKEND="embedded default (SQLite)"
[ -n "${TASKORCH_DATABASE_URL:-}" ] && BACKEND="${TASKORCH_DATABASE_URL%%://*}${TASKORCH_REDIS_URL:+ + Redis}${TASKORCH_AMQP_URL:+ + RabbitMQ}"
echo "wrk -t1 -c32 -d${SECS}s, server: release, $BACKEND, $(nproc) cores shared with wrk"
run "{ __typename }, no credential" "$TYPENAME" ""
run "{ __typename }, JWT" "$TYPENAME" "$JWT"
run "{ __typename }, API key" "$TYPENAME" "$KEY"
run "hot workflow(id) { status tasks { key status } }, JWT" "$HOT" "$JWT"
run "hot workflow(id) { status tasks { key status } }, API key" "$HOT" "$KEY"
run_miss "hot workflow(id), a new document each time, JWT" "$JWT"
