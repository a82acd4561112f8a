//! Multi-row inserts on PostgreSQL as one statement with one parameter: the rows travel as a JSON array and
//! `json_to_recordset` expands them server-side. Binding 28 columns × 1,000 rows one value at a time dominated the
//! submission of large workflows; this is one bind and one parse, whatever the row count.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// A table's columns with their PostgreSQL types, in insert order.
pub(crate) struct Columns(pub &'static [(&'static str, &'static str)]);

pub(crate) const TASK: Columns = Columns(&[
    ("id", "uuid"),
    ("workflow_id", "uuid"),
    ("key", "text"),
    ("kind", "text"),
    ("position", "int"),
    ("status", "text"),
    ("payload", "json"),
    ("result", "json"),
    ("error", "text"),
    ("depends_on", "json"),
    ("dependents", "json"),
    ("pending_deps", "int"),
    ("priority", "smallint"),
    ("attempts", "int"),
    ("attempt_base", "int"),
    ("retry", "json"),
    ("timeout_ms", "bigint"),
    ("idempotency_key", "text"),
    ("compensation", "json"),
    ("comp_kind", "text"),
    ("comp_attempts", "int"),
    ("comp_attempt_base", "int"),
    ("available_at", "bigint"),
    ("dispatched_until", "bigint"),
    ("lease_until", "bigint"),
    ("queued_at", "bigint"),
    ("started_at", "bigint"),
    ("finished_at", "bigint"),
]);

pub(crate) const EVENT: Columns = Columns(&[
    ("workflow_id", "uuid"),
    ("sequence", "bigint"),
    ("event_type", "text"),
    ("task_key", "text"),
    ("at", "bigint"),
    ("data", "json"),
]);

/// `INSERT INTO table (…) SELECT … FROM json_to_recordset($1)`: rows serialise to JSON objects keyed by column (a
/// JSON null, or a missing key, is SQL NULL). They are written straight into the statement's one parameter, with no
/// JSON tree in between.
pub(crate) async fn insert_json<C: ConnectionTrait, R: serde::Serialize>(
    conn: &C,
    table: &str,
    columns: &Columns,
    rows: &[R],
) -> Result<(), DbErr> {
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = columns.0.iter().map(|(n, _)| *n).collect();
    let typed: Vec<String> = columns.0.iter().map(|(n, t)| format!("{n} {t}")).collect();
    let sql = format!(
        "INSERT INTO {table} ({}) SELECT {} FROM json_to_recordset($1::json) AS r({})",
        names.join(", "),
        names.join(", "),
        typed.join(", ")
    );
    let body = serde_json::to_string(rows).map_err(|e| DbErr::Custom(format!("rows of {table}: {e}")))?;
    conn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, [body.into()])).await?;
    Ok(())
}

/// A PostgreSQL array literal of ids, bound as text and cast with `$n::uuid[]`. Set-based updates also filter on
/// `id = ANY(…)` so the planner sees how few rows they touch and walks the primary key, whatever its statistics
/// say about the JSON rows they join.
pub(crate) fn uuid_array(ids: impl IntoIterator<Item = uuid::Uuid>) -> String {
    let mut out = String::from("{");
    for (i, id) in ids.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_columns_are_the_entitys() {
        use sea_orm::Iterable;
        let entity: std::collections::BTreeSet<String> =
            taskorch_entity::task::Column::iter().map(|c| sea_orm::IdenStatic::as_str(&c).to_owned()).collect();
        let listed: std::collections::BTreeSet<String> = TASK.0.iter().map(|(n, _)| (*n).to_owned()).collect();
        assert_eq!(entity, listed);
        let entity: std::collections::BTreeSet<String> =
            taskorch_entity::event::Column::iter().map(|c| sea_orm::IdenStatic::as_str(&c).to_owned()).collect();
        let listed: std::collections::BTreeSet<String> = EVENT.0.iter().map(|(n, _)| (*n).to_owned()).collect();
        assert_eq!(entity, listed);
    }
}
