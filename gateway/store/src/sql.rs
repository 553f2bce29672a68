//! A small builder for the report queries: the same SQL text for SQLite
//! and PostgreSQL, with placeholders written the way each engine wants.

use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    IsolationLevel, QueryResult, Statement, TransactionTrait, Value,
};

use crate::error::OrDb;
use crate::error::Result;

/// Above this many agencies a scope is filtered after aggregation (the
/// grouped rows are few) instead of by a long `IN` list.
const MAX_IN_LIST: usize = 2000;

/// Which agencies a report's query keeps.
#[derive(Debug, Clone)]
pub enum Filter {
    All,
    Codes(Vec<String>),
}

impl Filter {
    /// The agencies `codes` (`None`: every agency); a list too long for an
    /// `IN` keeps every agency, to be filtered after aggregation.
    pub fn of(codes: Option<Vec<String>>) -> Filter {
        match codes {
            Some(c) if c.len() <= MAX_IN_LIST => Filter::Codes(c),
            _ => Filter::All,
        }
    }
}

pub(crate) struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    pub(crate) fn new(backend: DbBackend) -> Sql {
        Sql {
            backend,
            text: String::with_capacity(512),
            values: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, s: &str) -> &mut Sql {
        self.text.push_str(s);
        self
    }

    /// Appends a placeholder bound to `v`.
    pub(crate) fn bind(&mut self, v: impl Into<Value>) -> &mut Sql {
        self.values.push(v.into());
        match self.backend {
            DbBackend::Postgres => {
                let n = self.values.len();
                self.text.push('$');
                self.text.push_str(&n.to_string());
            }
            _ => self.text.push('?'),
        }
        self
    }

    /// `(?, ?), (?, ?), …`: pairs to match a row value against, as in
    /// `(a, b) IN (VALUES …)` (both engines read it; SQLite has no other
    /// form of a row-value list).
    pub(crate) fn pairs<A, B>(&mut self, pairs: impl IntoIterator<Item = (A, B)>) -> &mut Sql
    where
        A: Into<Value>,
        B: Into<Value>,
    {
        for (i, (a, b)) in pairs.into_iter().enumerate() {
            self.push(if i == 0 { "(" } else { ", (" });
            self.bind(a).push(", ").bind(b).push(")");
        }
        self
    }

    /// ` AND col IN (…)` for a scope (nothing for every agency).
    pub(crate) fn filter(&mut self, col: &str, f: &Filter) -> &mut Sql {
        match f {
            Filter::All => {}
            Filter::Codes(codes) if codes.is_empty() => {
                self.push(" AND 1 = 0");
            }
            Filter::Codes(codes) if codes.len() == 1 => {
                self.push(" AND ")
                    .push(col)
                    .push(" = ")
                    .bind(codes[0].clone());
            }
            Filter::Codes(codes) => {
                self.push(" AND ").push(col).push(" IN (");
                for (i, c) in codes.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.bind(c.clone());
                }
                self.push(")");
            }
        }
        self
    }

    pub(crate) fn statement(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }

    pub(crate) async fn all<C: ConnectionTrait>(self, c: &C) -> Result<Vec<QueryResult>> {
        c.query_all_raw(self.statement()).await.or_db()
    }

    pub(crate) async fn one<C: ConnectionTrait>(self, c: &C) -> Result<Option<QueryResult>> {
        c.query_one_raw(self.statement()).await.or_db()
    }
}

/// A read-only transaction for a report's queries: they all see the same
/// snapshot. On PostgreSQL nested-loop joins are turned off inside it: the
/// report joins large aggregates on several columns, PostgreSQL
/// underestimates such joins badly, and a nested loop over them goes
/// quadratic (minutes instead of seconds); hash joins keep every query
/// linear in the rows of the period. `work_mem` is raised for this
/// transaction only.
pub(crate) async fn snapshot(db: &DatabaseConnection) -> Result<DatabaseTransaction> {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let txn = db
                .begin_with_config(
                    Some(IsolationLevel::RepeatableRead),
                    Some(AccessMode::ReadOnly),
                )
                .await
                .or_db()?;
            txn.execute_unprepared("SET LOCAL enable_nestloop = off")
                .await
                .or_db()?;
            // Sorts and hashes of a year's deliveries stay in memory.
            txn.execute_unprepared("SET LOCAL work_mem = '256MB'")
                .await
                .or_db()?;
            Ok(txn)
        }
        _ => Ok(db.begin().await.or_db()?),
    }
}

/// A column as `i64` (COUNT, SUM and times are 64-bit integers on both engines).
pub(crate) fn int(row: &QueryResult, col: &str) -> Result<i64> {
    Ok(row.try_get::<Option<i64>>("", col).or_db()?.unwrap_or(0))
}

pub(crate) fn text(row: &QueryResult, col: &str) -> Result<String> {
    Ok(row
        .try_get::<Option<String>>("", col)
        .or_db()?
        .unwrap_or_default())
}

/// `s` made safe inside a `LIKE` pattern with `ESCAPE '\'`.
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_engine() {
        let codes = Filter::Codes(vec!["a".into(), "b".into()]);
        let mut q = Sql::new(DbBackend::Postgres);
        q.push("SELECT 1 WHERE x = ").bind(1i64).filter("y", &codes);
        assert_eq!(q.text, "SELECT 1 WHERE x = $1 AND y IN ($2, $3)");
        let mut q = Sql::new(DbBackend::Sqlite);
        q.push("SELECT 1 WHERE x = ").bind(1i64).filter("y", &codes);
        assert_eq!(q.text, "SELECT 1 WHERE x = ? AND y IN (?, ?)");
        assert_eq!(like_escape("50%_a\\"), "50\\%\\_a\\\\");
        let mut q = Sql::new(DbBackend::Postgres);
        q.push("UPDATE t SET x = ")
            .bind(1i64)
            .push(" WHERE (a, b) IN (VALUES ");
        q.pairs([("p", "q"), ("r", "s")]).push(")");
        assert_eq!(
            q.text,
            "UPDATE t SET x = $1 WHERE (a, b) IN (VALUES ($2, $3), ($4, $5))"
        );
        assert_eq!(q.values.len(), 5);
    }
}
