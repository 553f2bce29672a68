//! What the gateway has kept, for those who only read it: the reports, the
//! dashboard and the monthly job live outside the core and see the
//! database through [`Records`], which has no way to write. The one write
//! they ask for, filling the report columns of old documents, is
//! [`Gateway::index_documents`].

use crate::error::Result;
use crate::pipeline::Gateway;
use crate::rows::{AgencyRow, MessageRow, SigningCertRow};
use crate::store::Store;
pub use lienthong_store::public_directory::{PublicAgency, PublicDirectoryPage};
use lienthong_store::reports::{
    BackupRow, Filter, MessageHit, OverdueRow, PendingInbox, RefusalRow, ReportRows, ReportWindow,
    Traffic,
};

/// A read-only view of the gateway's database: the directory, the messages
/// and the transfer log, in the words of the reports that read them.
/// Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Records<'a>(&'a Store);

impl<'a> From<&'a Store> for Records<'a> {
    fn from(store: &'a Store) -> Records<'a> {
        Records(store)
    }
}

impl Gateway {
    /// The gateway's records, to be read.
    pub fn records(&self) -> Records<'_> {
        Records(self.store())
    }

    /// Fills the report columns (DueDate, số/ký hiệu, trích yếu) of the
    /// documents accepted before the pipeline wrote them; returns how many.
    /// Run by the jobs that report, before they read.
    pub async fn index_documents(&self) -> Result<u64> {
        self.store().index_documents(crate::facts::of_signed).await
    }
}

impl Records<'_> {
    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.0.ping().await
    }

    /// Every agency of the directory, ordered by code.
    pub async fn agencies(&self) -> Result<Vec<AgencyRow>> {
        self.0.agencies().await
    }

    /// One agency of the directory.
    pub async fn agency(&self, organ_id: &str) -> Result<Option<AgencyRow>> {
        self.0.agency(organ_id).await
    }

    /// The binding of a document-signing key (SHA-256 of its
    /// SubjectPublicKeyInfo, hex).
    pub async fn signing_cert(&self, spki_sha256_hex: &str) -> Result<Option<SigningCertRow>> {
        self.0.signing_cert(spki_sha256_hex).await
    }

    /// A message as accepted.
    pub async fn message(&self, sender: &str, message_id: &str) -> Result<Option<MessageRow>> {
        self.0.message(sender, message_id).await
    }

    /// The rows of a report, in one read-only snapshot.
    pub async fn report_rows(&self, window: &ReportWindow, filter: &Filter) -> Result<ReportRows> {
        self.0.report_rows(window, filter).await
    }

    /// Counts of the traffic in `t0..t1` (Unix microseconds).
    pub async fn traffic(&self, t0: i64, t1: i64) -> Result<Traffic> {
        self.0.traffic(t0, t1).await
    }

    /// Every agency with unacknowledged deliveries, the deepest first.
    pub async fn pending_inboxes(&self) -> Result<Vec<PendingInbox>> {
        self.0.pending_inboxes().await
    }

    /// The newest `backup` line, and the newest of a finished backup.
    pub async fn last_backups(&self) -> Result<(Option<BackupRow>, Option<BackupRow>)> {
        self.0.last_backups().await
    }

    /// The latest refusals, newest first.
    pub async fn recent_refusals(&self, limit: i64) -> Result<Vec<RefusalRow>> {
        self.0.recent_refusals(limit).await
    }

    /// Deliveries past their DueDate without a 06: how many, and the most
    /// overdue.
    pub async fn overdue_deliveries(
        &self,
        accepted_since: i64,
        today: &str,
    ) -> Result<(u64, Vec<OverdueRow>)> {
        self.0.overdue_deliveries(accepted_since, today).await
    }

    /// Deliveries created in `created_since..=cutoff` still without a 03.
    pub async fn deliveries_without_03(&self, created_since: i64, cutoff: i64) -> Result<u64> {
        self.0.deliveries_without_03(created_since, cutoff).await
    }

    /// Messages found by message_id, số/ký hiệu or words of the document.
    pub async fn search_messages(&self, q: &str) -> Result<Vec<MessageHit>> {
        self.0.search_messages(q).await
    }

    /// The public directory: agencies whose code or name holds `q` (case
    /// and diacritics ignored; all when blank), in code order, `limit` from
    /// the `offset`-th, with how many match — public fields only.
    pub async fn public_directory(
        &self,
        q: &str,
        limit: u64,
        offset: u64,
    ) -> Result<PublicDirectoryPage> {
        self.0.public_directory(q, limit, offset).await
    }

    /// One agency of the public directory, by its exact code.
    pub async fn public_agency(&self, organ_id: &str) -> Result<Option<PublicAgency>> {
        self.0.public_agency(organ_id).await
    }
}
