#!/usr/bin/env bash
# Concurrent workflowEvents subscriptions on one release server (embedded default): idle RSS, the time to open
# them, live delivery delay (commit → arrival) and peak RSS. Usage: bench/subscriptions.sh [subscriptions, 10000]
set -euo pipefail
cd "$(dirname "$0")/.."
SUBS=${1:-10000}
cargo build --release -q --bin taskorch --bin taskorch-subbench
BIN=$(realpath "${CARGO_TARGET_DIR:-target}/release")
DIR=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
PASS=bench-admin-password
(cd "$DIR" && TASKORCH_LISTEN=127.0.0.1:0 TASKORCH_LOG=warn TASKORCH_ADMIN_PASSWORD=$PASS \
  TASKORCH_RATE_LIMITS=list=0,read=0,write=0,subscribe=0,login=0 exec "$BIN/taskorch" > "$DIR/out" 2>&1) &
PID=$!
for _ in $(seq 100); do grep -q listening "$DIR/out" 2>/dev/null && break; sleep 0.1; done
sleep 2 # let the idle server settle before its RSS is read
URL=$(grep -o 'http://[^ ]*/graphql' "$DIR/out" | head -1)
JWT=$(curl -s "$URL" -H 'content-type: application/json' -d \
  '{"query":"mutation { login(email: \"admin@taskorch.local\", password: \"'$PASS'\") { accessToken } }"}' |
  sed 's/.*"accessToken":"\([^"]*\)".*/\1/')
"$BIN/taskorch-subbench" --url "$URL" --token "$JWT" --pid "$PID" --subscriptions "$SUBS"
