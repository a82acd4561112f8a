#!/usr/bin/env bash
# The floor of PostgreSQL alone for a task's durable life, in plain SQL: per script run, 100 tasks of one workflow
# inserted with their TASK_QUEUED events, claimed with TASK_STARTED, completed with TASK_COMPLETED, three commits;
# no JSON, no joins, no workflow counters, nothing else running. Prints tasks/s (pgbench tps x 100) for 2, 4 and 8
# clients on a throwaway database. Usage: bench/pg-floor.sh [seconds per run, default 8] (PG: libpq URL of the server)
set -euo pipefail
SECS=${1:-8}
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
DB=taskorch_pg_floor
DIR=$(mktemp -d)
trap 'psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" 2>/dev/null || true; rm -rf "$DIR"' EXIT
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" 2>/dev/null
psql "$PG/$DB" -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE task (id uuid PRIMARY KEY, workflow_id uuid NOT NULL, key text NOT NULL, status text NOT NULL,
  payload text, result text, dispatched_until bigint NOT NULL, lease_until bigint) WITH (fillfactor = 50);
CREATE UNIQUE INDEX task_key ON task (workflow_id, key);
CREATE INDEX task_due ON task (dispatched_until) WHERE dispatched_until >= 0;
CREATE TABLE event (workflow_id uuid NOT NULL, sequence bigint NOT NULL, event_type text NOT NULL, task_key text,
  at bigint NOT NULL, data json, PRIMARY KEY (workflow_id, sequence));
SQL
cat > "$DIR/model.sql" <<'SQL'
\set wf random(1, 1000000000)
BEGIN;
INSERT INTO task (id, workflow_id, key, status, payload, dispatched_until)
  SELECT gen_random_uuid(), ('00000000-0000-0000-0000-' || lpad(:wf::text, 12, '0'))::uuid, 't' || g, 'QUEUED', '{}', 0
  FROM generate_series(1, 100) g;
INSERT INTO event (workflow_id, sequence, event_type, task_key, at)
  SELECT ('00000000-0000-0000-0000-' || lpad(:wf::text, 12, '0'))::uuid, g, 'TASK_QUEUED', 't' || g, 1
  FROM generate_series(1, 100) g;
COMMIT;
BEGIN;
UPDATE task SET status = 'RUNNING', lease_until = 5
  WHERE workflow_id = ('00000000-0000-0000-0000-' || lpad(:wf::text, 12, '0'))::uuid;
INSERT INTO event (workflow_id, sequence, event_type, task_key, at)
  SELECT ('00000000-0000-0000-0000-' || lpad(:wf::text, 12, '0'))::uuid, 100 + g, 'TASK_STARTED', 't' || g, 2
  FROM generate_series(1, 100) g;
COMMIT;
BEGIN;
UPDATE task SET status = 'COMPLETED', result = '{}', dispatched_until = -1
  WHERE workflow_id = ('00000000-0000-0000-0000-' || lpad(:wf::text, 12, '0'))::uuid;
INSERT INTO event (workflow_id, sequence, event_type, task_key, at)
  SELECT ('00000000-0000-0000-0000-' || lpad(:wf::text, 12, '0'))::uuid, 200 + g, 'TASK_COMPLETED', 't' || g, 3
  FROM generate_series(1, 100) g;
COMMIT;
SQL
for c in 2 4 8; do
  tps=$(pgbench "$PG/$DB" -n -c"$c" -T"$SECS" -f "$DIR/model.sql" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  printf 'clients %d: %8.0f tasks/s\n' "$c" "$(echo "$tps * 100" | bc -l)"
done
