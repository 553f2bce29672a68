//! Maintenance windows as rows: announced, cancelled (never deleted), and
//! read back. What a window may say and when it may be cancelled is the
//! core's.

use lienthong_schema::entity::maintenance;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, Set,
};

use crate::error::{OrDb, Result};
use crate::store::Store;

/// A maintenance window as stored. Times are Unix microseconds.
pub use lienthong_schema::entity::maintenance::Model as MaintenanceRow;

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
    }

    /// The window `id`, if there is one.
    pub async fn maintenance_window(&self, id: i64) -> Result<Option<MaintenanceRow>> {
        maintenance::Entity::find_by_id(id)
            .one(self.connection())
            .await
            .or_db()
    }

    /// Marks a window cancelled at `at`.
    pub async fn cancel_maintenance(&self, row: MaintenanceRow, at: i64) -> Result<MaintenanceRow> {
        let mut active = row.into_active_model();
        active.cancelled_at = Set(Some(at));
        active.update(self.connection()).await.or_db()
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
    }
}
