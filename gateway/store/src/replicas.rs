//! Replicas of one database must run with the same trust and routes: a
//! replica that trusted another authority, or routed a code elsewhere, would
//! accept or deliver what its peers refuse. Each records digests of both
//! under its name; a starting replica compares its own with those of the
//! live ones (those whose name lease is held) and refuses to join, naming
//! the difference.

use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use crate::error::{Error, OrErr, Reason, Result};
use crate::store::{Store, now_micros};

/// What must be the same on every replica, as SHA-256 digests (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// The trust anchors and revocation lists, as read.
    pub trust_sha256: String,
    /// The route table.
    pub routes_sha256: String,
}

/// The lease a replica holds under its name for its lifetime.
pub fn name_lease(name: &str) -> String {
    format!("replica:{name}")
}

impl Store {
    /// Records this replica's configuration after comparing it with every
    /// other live replica's. Call it holding this replica's name lease.
    pub async fn join_replicas(&self, config: &ReplicaConfig) -> Result<()> {
        let db = self.connection();
        let backend = db.get_database_backend();
        let me = self.writer().as_str().to_owned();
        let rows = db
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                placeholders(backend, "SELECT name, trust_sha256, routes_sha256 FROM replicas WHERE name <> ?1 ORDER BY name"),
                [Value::from(me.clone())],
            ))
            .await
            .or_err(Reason::Unavailable, "cannot read the replicas of this database")?;
        for row in rows {
            let read = |c: &str| row.try_get::<String>("", c);
            let (Ok(name), Ok(trust), Ok(routes)) =
                (read("name"), read("trust_sha256"), read("routes_sha256"))
            else {
                continue;
            };
            if trust == config.trust_sha256 && routes == config.routes_sha256 {
                continue;
            }
            // Only a live replica counts: one that stopped for good, or runs
            // the new configuration under another name, does not.
            if self.try_lease(&name_lease(&name)).await?.is_some() {
                continue;
            }
            let what = match (trust != config.trust_sha256, routes != config.routes_sha256) {
                (true, true) => {
                    "other trust anchors or revocation lists (trust.anchors, trust.crls) and other routes ([[routes]])"
                }
                (true, false) => {
                    "other trust anchors or revocation lists (trust.anchors, trust.crls)"
                }
                _ => "other routes ([[routes]])",
            };
            return Err(Error::new(
                Reason::Internal,
                format!(
                    "replica {name:?}, live on this database, runs with {what} than this one: every replica must run with the same configuration; give this one the same files, or stop {name:?} first"
                ),
            ));
        }
        let upsert = match backend {
            DbBackend::Postgres => {
                "INSERT INTO replicas (name, trust_sha256, routes_sha256, started_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET trust_sha256 = excluded.trust_sha256, routes_sha256 = excluded.routes_sha256, started_at = excluded.started_at"
            }
            _ => {
                "INSERT INTO replicas (name, trust_sha256, routes_sha256, started_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (name) DO UPDATE SET trust_sha256 = excluded.trust_sha256, routes_sha256 = excluded.routes_sha256, started_at = excluded.started_at"
            }
        };
        db.execute_raw(Statement::from_sql_and_values(
            backend,
            upsert,
            [
                Value::from(me),
                Value::from(config.trust_sha256.clone()),
                Value::from(config.routes_sha256.clone()),
                Value::from(now_micros()),
            ],
        ))
        .await
        .or_err(
            Reason::Unavailable,
            "cannot record this replica's configuration",
        )?;
        Ok(())
    }
}

/// `?1`-style placeholders the way the engine wants them.
fn placeholders(backend: DbBackend, sql: &str) -> String {
    match backend {
        DbBackend::Postgres => sql.replace("?1", "$1"),
        _ => sql.replace("?1", "?"),
    }
}
