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
    ) -> Result<MaintenanceRow> {
        maintenance::ActiveModel {
            starts_at: Set(starts_at),
            ends_at: Set(ends_at),
            message: Set(message),
            announced_at: Set(announced_at),
            cancelled_at: Set(None),
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
