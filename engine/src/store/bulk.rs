//! Multi-row inserts on PostgreSQL as one statement with one parameter per column: each column travels as an array
//! literal and `unnest` turns the arrays back into rows server-side. Binding 28 columns × 1,000 rows one value at a
//! time dominated the submission of large workflows; rows as one JSON array (`json_to_recordset`) were one bind, but
//! PostgreSQL then spent more time parsing the JSON (every row repeats every column name) than inserting the rows.
//! Array literals carry only the values and parse about three times as fast.

use std::io::Write;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use serde_json::Value as Json;
use taskorch_entity::{event_chunk, task};
use uuid::Uuid;

/// A table's columns with their PostgreSQL types, in insert order.
pub(crate) struct Columns<const N: usize>(pub [(&'static str, &'static str); N]);

/// A table's columns and the function that turns a row into its values, from one list: each column's name, type and
/// value stand on one line, so the values cannot drift out of the columns' order.
macro_rules! table {
    ($(#[$doc:meta])* $columns:ident, $cells:ident, |$row:ident: $ty:ty| { $($name:literal $sql:literal => $cell:expr,)* }) => {
        $(#[$doc])*
        pub(crate) const $columns: Columns<{ [$($name),*].len() }> = Columns([$(($name, $sql)),*]);

        /// A row's values, in the order of its columns.
        pub(crate) fn $cells($row: $ty) -> [Cell<'_>; { [$($name),*].len() }] {
            [$($cell),*]
        }
    };
}

table!(
    /// The `task` table.
    TASK, task_cells, |m: &task::Model| {
        "id" "uuid" => Cell::Id(m.id),
        "workflow_id" "uuid" => Cell::Id(m.workflow_id),
        "key" "text" => Cell::Text(&m.key),
        "kind" "text" => Cell::Text(&m.kind),
        "position" "int" => Cell::Int(m.position.into()),
        "status" "text" => Cell::Text(&m.status),
        "payload" "json" => json(&m.payload),
        "result" "json" => json(&m.result),
        "error" "text" => text(&m.error),
        "depends_on" "json" => Cell::Json(&m.depends_on),
        "dependents" "json" => Cell::Json(&m.dependents),
        "pending_deps" "int" => Cell::Int(m.pending_deps.into()),
        "priority" "smallint" => Cell::Int(m.priority.into()),
        "attempts" "int" => Cell::Int(m.attempts.into()),
        "attempt_base" "int" => Cell::Int(m.attempt_base.into()),
        "retry" "json" => Cell::Json(&m.retry),
        "timeout_ms" "bigint" => int(m.timeout_ms),
        "idempotency_key" "text" => text(&m.idempotency_key),
        "compensation" "json" => json(&m.compensation),
        "comp_kind" "text" => text(&m.comp_kind),
        "comp_attempts" "int" => Cell::Int(m.comp_attempts.into()),
        "comp_attempt_base" "int" => Cell::Int(m.comp_attempt_base.into()),
        "available_at" "bigint" => Cell::Int(m.available_at),
        "dispatched_until" "bigint" => Cell::Int(m.dispatched_until),
        "lease_until" "bigint" => int(m.lease_until),
        "queued_at" "bigint" => int(m.queued_at),
        "started_at" "bigint" => int(m.started_at),
        "finished_at" "bigint" => int(m.finished_at),
    }
);

table!(
    /// The `event_chunk` table.
    EVENT_CHUNK, event_chunk_cells, |c: &event_chunk::Model| {
        "workflow_id" "uuid" => Cell::Id(c.workflow_id),
        "last_sequence" "bigint" => Cell::Int(c.last_sequence),
        "first_sequence" "bigint" => Cell::Int(c.first_sequence),
        "at" "bigint" => Cell::Int(c.at),
        "events" "text" => Cell::Text(&c.events),
    }
);

fn json(v: &Option<Json>) -> Cell<'_> {
    v.as_ref().map_or(Cell::Null, Cell::Json)
}

fn text(v: &Option<String>) -> Cell<'_> {
    v.as_deref().map_or(Cell::Null, Cell::Text)
}

fn int(v: Option<i64>) -> Cell<'static> {
    v.map_or(Cell::Null, Cell::Int)
}

/// One value of a row. A JSON `null` is SQL NULL.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cell<'a> {
    Null,
    Int(i64),
    Id(Uuid),
    Text(&'a str),
    Json(&'a Json),
}

/// A PostgreSQL array literal (`{1,NULL,"text"}`), bound as text and cast with `$n::type[]`.
pub(crate) struct ArrayLiteral(Vec<u8>);

impl Default for ArrayLiteral {
    fn default() -> Self {
        Self(vec![b'{'])
    }
}

impl ArrayLiteral {
    pub(crate) fn push(&mut self, cell: Cell<'_>) {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        match cell {
            Cell::Null | Cell::Json(Json::Null) => self.0.extend_from_slice(b"NULL"),
            Cell::Int(v) => {
                let _ = write!(self.0, "{v}");
            }
            Cell::Id(v) => {
                let _ = write!(self.0, "{}", v.hyphenated());
            }
            Cell::Text(s) => {
                self.0.push(b'"');
                Quoted(&mut self.0).write_all(s.as_bytes()).unwrap_or(());
                self.0.push(b'"');
            }
            Cell::Json(v) => {
                self.0.push(b'"');
                // Serialised straight into the literal: no JSON string in between. Writing to a Vec cannot fail.
                let _ = serde_json::to_writer(Quoted(&mut self.0), v);
                self.0.push(b'"');
            }
        }
    }

    /// The literal. Only UTF-8 went in (strings, JSON, digits), so the check cannot fail.
    pub(crate) fn finish(mut self) -> Result<String, DbErr> {
        self.0.push(b'}');
        String::from_utf8(self.0).map_err(|e| DbErr::Custom(format!("array literal: {e}")))
    }
}

/// Writes bytes into a double-quoted array element: `"` and `\` get a backslash.
struct Quoted<'a>(&'a mut Vec<u8>);

impl Write for Quoted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while let Some(at) = rest.iter().position(|b| matches!(b, b'"' | b'\\')) {
            self.0.extend_from_slice(&rest[..at]);
            self.0.push(b'\\');
            self.0.push(rest[at]);
            rest = &rest[at + 1..];
        }
        self.0.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `INSERT INTO table (…) SELECT * FROM unnest($1::t1[], …)`: one array literal per column, rows in order.
pub(crate) async fn insert_rows<'r, C, const N: usize>(
    conn: &C,
    table: &str,
    columns: &Columns<N>,
    rows: impl IntoIterator<Item = [Cell<'r>; N]>,
) -> Result<(), DbErr>
where
    C: ConnectionTrait,
{
    let mut arrays: [Column; N] = std::array::from_fn(|i| match columns.0[i].1 {
        "uuid" => Column::Ids(Vec::new()),
        _ => Column::Literal(ArrayLiteral::default()),
    });
    let mut count = 0usize;
    for row in rows {
        for (array, cell) in arrays.iter_mut().zip(row) {
            array.push(cell)?;
        }
        count += 1;
    }
    if count == 0 {
        return Ok(());
    }
    let names: Vec<&str> = columns.0.iter().map(|(n, _)| *n).collect();
    let typed: Vec<String> = columns.0.iter().enumerate().map(|(i, (_, t))| format!("${}::{t}[]", i + 1)).collect();
    let sql = format!("INSERT INTO {table} ({}) SELECT * FROM unnest({})", names.join(", "), typed.join(", "));
    let values = arrays.into_iter().map(Column::finish).collect::<Result<Vec<_>, _>>()?;
    conn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    Ok(())
}

/// One column of a multi-row insert: ids travel as a binary `uuid[]` (PostgreSQL reads each id of a literal with
/// 16 `strtoul` calls: the largest single cost of parsing a batch), the rest as array literals.
enum Column {
    Ids(Vec<Uuid>),
    Literal(ArrayLiteral),
}

impl Column {
    fn push(&mut self, cell: Cell<'_>) -> Result<(), DbErr> {
        match (self, cell) {
            (Column::Ids(ids), Cell::Id(id)) => ids.push(id),
            (Column::Ids(_), other) => return Err(DbErr::Custom(format!("a uuid column holds {other:?}"))),
            (Column::Literal(literal), cell) => literal.push(cell),
        }
        Ok(())
    }

    fn finish(self) -> Result<sea_orm::Value, DbErr> {
        match self {
            Column::Ids(ids) => Ok(uuid_array(ids)),
            Column::Literal(literal) => literal.finish().map(sea_orm::Value::from),
        }
    }
}

/// Ids as a binary `uuid[]` parameter (written `$n::uuid[]` in statements, a no-op cast). Set-based updates also
/// filter on `id = ANY(…)` so the planner sees how few rows they touch and walks the primary key, whatever its
/// statistics say about the JSON rows they join.
pub(crate) fn uuid_array(ids: impl IntoIterator<Item = Uuid>) -> sea_orm::Value {
    let ids: Vec<sea_orm::Value> = ids.into_iter().map(sea_orm::Value::from).collect();
    sea_orm::Value::Array(sea_orm::sea_query::ArrayType::Uuid, Some(Box::new(ids)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_task_columns_are_the_entitys() {
        use sea_orm::Iterable;
        let entity: std::collections::BTreeSet<String> =
            taskorch_entity::task::Column::iter().map(|c| sea_orm::IdenStatic::as_str(&c).to_owned()).collect();
        let listed: std::collections::BTreeSet<String> = TASK.0.iter().map(|(n, _)| (*n).to_owned()).collect();
        assert_eq!(entity, listed);
        let entity: std::collections::BTreeSet<String> =
            taskorch_entity::event_chunk::Column::iter().map(|c| sea_orm::IdenStatic::as_str(&c).to_owned()).collect();
        let listed: std::collections::BTreeSet<String> = EVENT_CHUNK.0.iter().map(|(n, _)| (*n).to_owned()).collect();
        assert_eq!(entity, listed);
    }

    fn literal(cells: &[Cell<'_>]) -> String {
        let mut a = ArrayLiteral::default();
        cells.iter().for_each(|c| a.push(*c));
        a.finish().expect("utf-8")
    }

    #[test]
    fn array_literals_quote_text_and_json_and_spell_null() {
        assert_eq!(literal(&[]), "{}");
        assert_eq!(literal(&[Cell::Int(-1), Cell::Null, Cell::Int(7)]), "{-1,NULL,7}");
        assert_eq!(literal(&[Cell::Id(Uuid::nil())]), "{00000000-0000-0000-0000-000000000000}");
        // Text is always quoted, so `NULL`, commas, braces and blanks stay text; quotes and backslashes are escaped.
        assert_eq!(
            literal(&[Cell::Text("NULL"), Cell::Text(""), Cell::Text("a,b} {c"), Cell::Text(r#"say "hi" \o/"#)]),
            r#"{"NULL","","a,b} {c","say \"hi\" \\o/"}"#
        );
        let v = json!(["\"x\"\\", 1, null]);
        assert_eq!(literal(&[Cell::Json(&v), Cell::Json(&Json::Null)]), r#"{"[\"\\\"x\\\"\\\\\",1,null]",NULL}"#);
        assert_eq!(literal(&[Cell::Text("héllo ✓")]), "{\"héllo ✓\"}");
    }
}
