//! Maintenance windows as rows: announced, cancelled (never deleted), and
//! read back. What a window may say and when it may be cancelled is the
//! core's.

use lienthong_schema::entity::maintenance;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set, Unchanged,
};

use crate::error::{OrDb, Result};
use crate::store::Store;

/// A maintenance window as stored (cancelled ones keep their row). Times
/// are Unix microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceRow {
    pub id: i64,
    /// When the maintenance begins.
    pub starts_at: i64,
    /// When it is over, after `starts_at`.
    pub ends_at: i64,
    /// What agencies and the dashboard are told.
    pub message: String,
    pub announced_at: i64,
    /// Set when an operator cancelled the window.
    pub cancelled_at: Option<i64>,
    /// False when the operators expect no interruption (a rolling upgrade
    /// of the replicas): agencies need not hold back sends.
    pub interruption_expected: bool,
}

impl MaintenanceRow {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled_at.is_some()
    }
}

impl From<maintenance::Model> for MaintenanceRow {
    fn from(m: maintenance::Model) -> MaintenanceRow {
        MaintenanceRow {
            id: m.id,
            starts_at: m.starts_at,
            ends_at: m.ends_at,
            message: m.message,
            announced_at: m.announced_at,
            cancelled_at: m.cancelled_at,
            interruption_expected: m.interruption_expected,
        }
    }
}

impl Store {
    /// Writes a new window, announced at `announced_at`.
    pub async fn announce_maintenance(
        &self,
        starts_at: i64,
        ends_at: i64,
        message: String,
        announced_at: i64,
        interruption_expected: bool,
    ) -> Result<MaintenanceRow> {
        maintenance::ActiveModel {
            starts_at: Set(starts_at),
            ends_at: Set(ends_at),
            message: Set(message),
            announced_at: Set(announced_at),
            cancelled_at: Set(None),
            interruption_expected: Set(interruption_expected),
            ..Default::default()
        }
        .insert(self.connection())
        .await
        .or_db()
        .map(MaintenanceRow::from)
    }

    /// The window `id`, if there is one.
    pub async fn maintenance_window(&self, id: i64) -> Result<Option<MaintenanceRow>> {
        maintenance::Entity::find_by_id(id)
            .one(self.connection())
            .await
            .or_db()
            .map(|w| w.map(MaintenanceRow::from))
    }

    /// Marks a window cancelled at `at`.
    pub async fn cancel_maintenance(&self, row: MaintenanceRow, at: i64) -> Result<MaintenanceRow> {
        maintenance::ActiveModel {
            id: Unchanged(row.id),
            starts_at: Unchanged(row.starts_at),
            ends_at: Unchanged(row.ends_at),
            message: Unchanged(row.message),
            announced_at: Unchanged(row.announced_at),
            cancelled_at: Set(Some(at)),
            interruption_expected: Unchanged(row.interruption_expected),
        }
        .update(self.connection())
        .await
        .or_db()
        .map(MaintenanceRow::from)
    }

    /// The windows that end after `now`, cancelled ones included, soonest
    /// first.
    pub async fn maintenance_windows_ending_after(&self, now: i64) -> Result<Vec<MaintenanceRow>> {
        maintenance::Entity::find()
            .filter(maintenance::Column::EndsAt.gt(now))
            .order_by_asc(maintenance::Column::StartsAt)
            .order_by_asc(maintenance::Column::Id)
            .all(self.connection())
            .await
            .or_db()
            .map(|rows| rows.into_iter().map(MaintenanceRow::from).collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::store::WriterId;
    use crate::store::tests::on_postgres;
    use lienthong_schema::{Migrator, MigratorTrait};
    use sea_orm::ConnectionTrait;

    /// Windows the release before `interruption_expected` wrote, before the
    /// migration and (still running during a rolling upgrade) after it, read
    /// as interrupting; this release's own say what it announced.
    async fn written_by_the_previous_release(url: &str) -> Result<()> {
        let db = sea_orm::Database::connect(url).await.or_db()?;
        let before = Migrator::migrations()
            .iter()
            .position(|m| m.name().ends_with("_maintenance_interruption"))
            .expect("the migration") as u32;
        Migrator::up(&db, Some(before)).await.or_db()?;
        let previous = "INSERT INTO maintenance_windows (starts_at, ends_at, message, announced_at) \
                        VALUES (10, 20, 'trước', 0)";
        db.execute_unprepared(previous).await.or_db()?;
        Migrator::up(&db, None).await.or_db()?;
        db.execute_unprepared(previous).await.or_db()?;

        let store = Store::connect(url, WriterId::main()).await?;
        store
            .announce_maintenance(10, 20, "nâng cấp".into(), 0, false)
            .await?;
        let w = store
            .announce_maintenance(10, 20, "bảo trì".into(), 0, true)
            .await?;
        let w = store.cancel_maintenance(w, 5).await?;
        assert!(w.interruption_expected, "cancelling keeps it");
        let read: Vec<(String, bool)> = store
            .maintenance_windows_ending_after(0)
            .await?
            .into_iter()
            .map(|w| (w.message, w.interruption_expected))
            .collect();
        assert_eq!(
            read,
            [
                ("trước".to_owned(), true),
                ("trước".to_owned(), true),
                ("nâng cấp".to_owned(), false),
                ("bảo trì".to_owned(), true),
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn windows_of_the_previous_release_expect_an_interruption() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}/m.db?mode=rwc", dir.path().display());
        written_by_the_previous_release(&url).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn windows_of_the_previous_release_expect_an_interruption_on_postgres() -> Result<()> {
        on_postgres("maintenance_interruption", |url| async move {
            written_by_the_previous_release(&url).await
        })
        .await
    }
}
