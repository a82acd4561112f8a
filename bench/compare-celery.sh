#!/usr/bin/env bash
# Side by side, one after the other on this machine's RabbitMQ, Redis and PostgreSQL: Celery (the seed's worker
# technology, peer harness in ../shared/peers/celery) and taskorch-bench on the production stack. Prints both
# figures and the ratios. Usage: bench/compare-celery.sh [independent-tasks]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-5000}"
PEERS="${PEERS:-../shared/peers/celery}"
VENV="${VENV:-/tmp/taskorch-celery-venv}"
PG="${PG:-postgres://postgres@127.0.0.1:5432/postgres}"
AMQP="${AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}"
REDIS="${REDIS:-redis://127.0.0.1:6379}"

if [ ! -x "$VENV/bin/celery" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'celery[redis,msgpack]'
fi
workdir=$(mktemp -d)
cp "$PEERS/tasks.py" "$PEERS/bench.py" "$workdir/"
(cd "$workdir" && exec "$VENV/bin/celery" -A tasks worker -c 8 -P threads -l warning >/dev/null 2>&1) &
celery_pid=$!
trap 'kill $celery_pid 2>/dev/null || true; rm -rf "$workdir"' EXIT
sleep 5
celery_out=$(cd "$workdir" && "$VENV/bin/python" bench.py "$N")
kill $celery_pid 2>/dev/null || true
wait $celery_pid 2>/dev/null || true
echo "$celery_out"

cargo build -q --release --bin taskorch-bench
taskorch_out=$("${CARGO_TARGET_DIR:-target}/release/taskorch-bench" --database "$PG" --amqp-url "$AMQP" --redis-url "$REDIS" \
  --noop-tasks "$N" --chains 10)
echo "$taskorch_out"

celery_tps=$(echo "$celery_out" | sed -n 's/.*= \([0-9.]*\) tasks\/s.*/\1/p')
celery_hop=$(echo "$celery_out" | sed -n 's/.*median \([0-9.]*\) ms per hop.*/\1/p')
taskorch_tps=$(echo "$taskorch_out" | sed -n 's/^independent noop tasks *\([0-9.]*\) tasks\/s.*/\1/p')
taskorch_hop=$(echo "$taskorch_out" | sed -n 's/.*p50 *\([0-9.]*\) ms.*/\1/p')
python3 - "$celery_tps" "$taskorch_tps" "$celery_hop" "$taskorch_hop" <<'PY'
import sys
c_tps, t_tps, c_hop, t_hop = map(float, sys.argv[1:])
print(f"independent noop tasks/s: celery {c_tps:.0f}, taskorch {t_tps:.0f}, ratio {t_tps / c_tps:.1f}x")
print(f"chain hop p50 (ms):       celery {c_hop:.2f}, taskorch {t_hop:.2f}, ratio {c_hop / t_hop:.1f}x faster")
PY
