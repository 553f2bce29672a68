//! Databases: scratch PostgreSQL databases of one test (or one bench run),
//! and raw SQL on a gateway's database, SQLite or PostgreSQL, through sqlx
//! (the driver the gateway's own sea-orm runs on).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{AssertSqlSafe, Column as _, ConnectOptions as _, Row as _};

use crate::{notice, require_services};

/// PostgreSQL admin URL.
pub fn pg_admin_url() -> String {
    std::env::var("LIENTHONG_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// `url` with its database name replaced by `db`.
pub fn pg_url_with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..path_start], db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Runs `sql` (simple query protocol: `CREATE DATABASE` and the like) on a
/// connection of its own to `url`.
pub async fn pg_exec(url: &str, sql: &str) -> Result<(), String> {
    let db = Db::connect_with(url, 1, Duration::from_secs(3)).await?;
    let r = db.execute(sql).await.map(|_| ());
    db.close().await;
    r
}

/// A PostgreSQL database of one test or run, dropped (`WITH (FORCE)`) when
/// this value is dropped, also when the test panics, unless kept.
pub struct PgDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
    keep: bool,
}

impl PgDatabase {
    /// Creates `<prefix>_<uuid>` on the server of `admin_url`.
    pub async fn create(admin_url: &str, prefix: &str) -> Result<PgDatabase, String> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        pg_exec(admin_url, &format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|e| format!("CREATE DATABASE {name} on {admin_url}: {e}"))?;
        Ok(PgDatabase {
            admin_url: admin_url.to_owned(),
            url: pg_url_with_db(admin_url, &name),
            name,
            keep: false,
        })
    }

    /// Creates `lienthong_e2e_<uuid>`; `None` (with a SKIPPED line) when
    /// PostgreSQL is not reachable, unless services are required.
    pub async fn create_or_skip(test: &str) -> Option<PgDatabase> {
        let admin_url = pg_admin_url();
        if let Err(e) = pg_exec(&admin_url, "SELECT 1").await {
            if require_services() {
                panic!(
                    "{test}: PostgreSQL not reachable at {admin_url} ({e}), and \
                     LIENTHONG_REQUIRE_SERVICES=1 says it must be; set LIENTHONG_TEST_PG_URL"
                );
            }
            notice(&format!(
                "SKIPPED: {test}: PostgreSQL not reachable at {admin_url} ({e}); \
                 set LIENTHONG_TEST_PG_URL, or LIENTHONG_REQUIRE_SERVICES=1 to make this a failure"
            ));
            return None;
        }
        Some(
            PgDatabase::create(&admin_url, "lienthong_e2e")
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// Leaves the database in place when this value is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let admin = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let name = self.name.clone();
        // Drop may run inside a runtime (and during a panic): use a thread
        // with a runtime of its own.
        let r = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(pg_exec(&admin, &sql))
        })
        .join();
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop the database {name}: {e}"),
            Err(_) => eprintln!("warning: dropping the database {name} panicked"),
        }
    }
}

/// A pool on a gateway's database (`sqlite://…` or `postgres://…`), for
/// raw SQL: what the gateway wrote, edited behind its back, or a baseline
/// beside it.
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A value of a [`SqlRow`], as the driver gave it.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// A row of a raw query: its columns by name.
#[derive(Clone, Debug)]
pub struct SqlRow(pub Vec<(String, SqlValue)>);

/// What a column of a [`SqlRow`] can be read as.
pub trait FromSql: Sized {
    fn from_sql(v: &SqlValue) -> Option<Self>;
}

impl FromSql for i64 {
    fn from_sql(v: &SqlValue) -> Option<Self> {
        match v {
            SqlValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl FromSql for f64 {
    fn from_sql(v: &SqlValue) -> Option<Self> {
        match v {
            SqlValue::Real(x) => Some(*x),
            SqlValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}

impl FromSql for String {
    fn from_sql(v: &SqlValue) -> Option<Self> {
        match v {
            SqlValue::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl FromSql for Vec<u8> {
    fn from_sql(v: &SqlValue) -> Option<Self> {
        match v {
            SqlValue::Bytes(b) => Some(b.clone()),
            _ => None,
        }
    }
}

impl<T: FromSql> FromSql for Option<T> {
    fn from_sql(v: &SqlValue) -> Option<Self> {
        match v {
            SqlValue::Null => Some(None),
            v => T::from_sql(v).map(Some),
        }
    }
}

impl SqlRow {
    /// The value of `column`.
    pub fn value(&self, column: &str) -> Option<&SqlValue> {
        self.0.iter().find(|(c, _)| c == column).map(|(_, v)| v)
    }

    /// `column` as a `T`; `Err` names the column and what it held.
    pub fn try_get<T: FromSql>(&self, column: &str) -> Result<T, String> {
        let v = self
            .value(column)
            .ok_or_else(|| format!("no column {column} in {:?}", self.0))?;
        T::from_sql(v).ok_or_else(|| {
            format!(
                "column {column} holds {v:?}, not a {}",
                std::any::type_name::<T>()
            )
        })
    }

    /// `column` as a `T`; panics (in a test) when it is not one.
    pub fn get<T: FromSql>(&self, column: &str) -> T {
        self.try_get(column).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn sqlite_value(row: &SqliteRow, i: usize) -> SqlValue {
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map_or(SqlValue::Null, SqlValue::Int);
    }
    if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
        return v.map_or(SqlValue::Null, SqlValue::Real);
    }
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v.map_or(SqlValue::Null, SqlValue::Text);
    }
    match row.try_get::<Option<Vec<u8>>, _>(i) {
        Ok(Some(b)) => SqlValue::Bytes(b),
        _ => SqlValue::Null,
    }
}

fn pg_value(row: &PgRow, i: usize) -> SqlValue {
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map_or(SqlValue::Null, SqlValue::Int);
    }
    if let Ok(v) = row.try_get::<Option<i32>, _>(i) {
        return v.map_or(SqlValue::Null, |x| SqlValue::Int(x.into()));
    }
    if let Ok(v) = row.try_get::<Option<i16>, _>(i) {
        return v.map_or(SqlValue::Null, |x| SqlValue::Int(x.into()));
    }
    if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
        return v.map_or(SqlValue::Null, |x| SqlValue::Int(x.into()));
    }
    if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
        return v.map_or(SqlValue::Null, SqlValue::Real);
    }
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v.map_or(SqlValue::Null, SqlValue::Text);
    }
    match row.try_get::<Option<Vec<u8>>, _>(i) {
        Ok(Some(b)) => SqlValue::Bytes(b),
        _ => SqlValue::Null,
    }
}

impl Db {
    /// One connection to `url`.
    pub async fn connect(url: &str) -> Result<Db, String> {
        Db::connect_with(url, 1, Duration::from_secs(10)).await
    }

    /// `connections` connections to `url`, all opened now.
    pub async fn connect_with(
        url: &str,
        connections: u32,
        timeout: Duration,
    ) -> Result<Db, String> {
        let connect = async {
            if url.starts_with("sqlite:") {
                let opts = url
                    .parse::<SqliteConnectOptions>()
                    .map_err(|e| e.to_string())?
                    .disable_statement_logging();
                SqlitePoolOptions::new()
                    .max_connections(connections)
                    .min_connections(connections)
                    .acquire_timeout(timeout)
                    .connect_with(opts)
                    .await
                    .map(Db::Sqlite)
                    .map_err(|e| e.to_string())
            } else {
                let opts = url
                    .parse::<PgConnectOptions>()
                    .map_err(|e| e.to_string())?
                    .disable_statement_logging();
                PgPoolOptions::new()
                    .max_connections(connections)
                    .min_connections(connections)
                    .acquire_timeout(timeout)
                    .connect_with(opts)
                    .await
                    .map(Db::Postgres)
                    .map_err(|e| e.to_string())
            }
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(r) => r.map_err(|e| format!("connect to {url}: {e}")),
            Err(_) => Err(format!("connect to {url}: no answer in {timeout:?}")),
        }
    }

    pub fn is_sqlite(&self) -> bool {
        matches!(self, Db::Sqlite(_))
    }

    /// Runs `sql` as it is (one or more statements, no parameters); the
    /// rows it changed.
    pub async fn execute(&self, sql: &str) -> Result<u64, String> {
        let q = sqlx::raw_sql(AssertSqlSafe(sql.to_owned()));
        match self {
            Db::Sqlite(p) => q.execute(p).await.map(|r| r.rows_affected()),
            Db::Postgres(p) => q.execute(p).await.map(|r| r.rows_affected()),
        }
        .map_err(|e| format!("{sql}: {e}"))
    }

    /// Runs `sql` with one byte-string parameter (`?` on SQLite, `$1` on
    /// PostgreSQL), prepared once per connection.
    pub async fn execute_with_bytes(&self, sql: &str, value: &[u8]) -> Result<u64, String> {
        let sql = AssertSqlSafe(sql.to_owned());
        match self {
            Db::Sqlite(p) => sqlx::query(sql)
                .bind(value)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Db::Postgres(p) => sqlx::query(sql)
                .bind(value)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        }
        .map_err(|e| e.to_string())
    }

    /// The rows of `sql`.
    pub async fn rows(&self, sql: &str) -> Result<Vec<SqlRow>, String> {
        fn row<R: sqlx::Row>(r: &R, value: fn(&R, usize) -> SqlValue) -> SqlRow {
            let names = r.columns().iter().map(|c| c.name().to_owned());
            SqlRow(names.enumerate().map(|(i, c)| (c, value(r, i))).collect())
        }
        let sql_safe = || AssertSqlSafe(sql.to_owned());
        match self {
            Db::Sqlite(p) => sqlx::query(sql_safe())
                .fetch_all(p)
                .await
                .map(|rows| rows.iter().map(|r| row(r, sqlite_value)).collect()),
            Db::Postgres(p) => sqlx::query(sql_safe())
                .fetch_all(p)
                .await
                .map(|rows| rows.iter().map(|r| row(r, pg_value)).collect()),
        }
        .map_err(|e| format!("{sql}: {e}"))
    }

    pub async fn close(self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}
