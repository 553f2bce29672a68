//! The monthly report: on the first day of each month (Vietnam time) the
//! previous month's report is written to `reports.dir` as CSV and XLSX;
//! at start, a missing report for last month is written at once. With
//! `reports.send_to`, the same two files are then sent, once, as a signed
//! document from the gateway's own agency to those agencies, through the
//! one pipeline.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lienthong_proto::v1::{self as pb, Envelope};
use prost::Message as _;
use rustls_pki_types::UnixTime;

use super::render::{Format, period_file_name, to_csv, to_xlsx};
use super::{Lang, Period, ReportSettings, Scope, summary_in};
use lienthong_core::pipeline::{Caller, Gateway, Transport};
use lienthong_core::records::Records;
use lienthong_core::signing::{self, SigningKey, TrustAnchors};
use lienthong_core::store::Store;
use lienthong_types::error::{Error, Reason, Result};
use lienthong_types::now_micros;
use lienthong_types::organ_id::{IdPolicy, OrganId};

/// What the monthly task writes, and where.
#[derive(Debug, Clone)]
pub struct MonthlyReports {
    pub dir: PathBuf,
    pub scope: Scope,
    pub settings: ReportSettings,
    pub lang: Lang,
    /// `reports.send_to`: also send the files as a document.
    pub send: Option<ReportSending>,
}

/// Sending the monthly report as a document (`reports.send_to`): from the
/// gateway's own agency (`gateway.organ_id`), signed with its key
/// (`reports.signing_key`, by default the receipts key), to these agencies.
#[derive(Debug, Clone)]
pub struct ReportSending {
    from: OrganId,
    to: Vec<OrganId>,
    key: Arc<SigningKey>,
    /// DER, leaf first.
    chain: Vec<Vec<u8>>,
}

impl ReportSending {
    /// Checks the codes; the key and chain are checked against the
    /// directory by [`ReportSending::check`].
    pub fn new(
        from: &str,
        to: &[String],
        key: SigningKey,
        chain: Vec<Vec<u8>>,
    ) -> Result<ReportSending> {
        let from = OrganId::parse_with(from, IdPolicy::Lenient).map_err(|e| {
            Error::new(
                Reason::BadIdentifier,
                format!(
                    "gateway.organ_id (the agency the monthly report is sent from): {}",
                    e.message()
                ),
            )
        })?;
        let mut recipients: Vec<OrganId> = Vec::with_capacity(to.len());
        for t in to {
            let id = OrganId::parse_with(t, IdPolicy::Lenient).map_err(|e| {
                Error::new(
                    Reason::BadIdentifier,
                    format!("reports.send_to: {}", e.message()),
                )
            })?;
            if !recipients.contains(&id) {
                recipients.push(id);
            }
        }
        if recipients.is_empty() {
            return Err(Error::malformed(
                "reports.send_to names no agency to send the monthly report to",
            ));
        }
        if chain.is_empty() {
            return Err(Error::malformed(
                "the monthly report's signing certificate file holds no certificate",
            ));
        }
        Ok(ReportSending {
            from,
            to: recipients,
            key: Arc::new(key),
            chain,
        })
    }

    /// Loads the PKCS#8 key and the PEM chain (leaf first).
    pub fn load(from: &str, to: &[String], key: &Path, cert: &Path) -> Result<ReportSending> {
        let (key, chain) = signing::load_signer(key, cert, None)?;
        ReportSending::new(from, to, key, chain)
    }

    /// The agency the report is sent from.
    pub fn from(&self) -> &str {
        self.from.as_str()
    }

    /// The agencies it is sent to.
    pub fn to(&self) -> impl Iterator<Item = &str> {
        self.to.iter().map(OrganId::as_str)
    }

    /// What `serve` checks before it starts: the key signs, its certificate
    /// chains to `anchors` and is bound in the directory to the sending
    /// agency as a signing certificate, and every agency involved is in the
    /// directory. The error says what to fix.
    pub async fn check(&self, gw: &Gateway, anchors: &TrustAnchors) -> Result<()> {
        let from = self.from.as_str();
        let cannot = |why: String| {
            Error::new(
                Reason::CertificateNotBound,
                format!("reports.send_to is set but the monthly report cannot be sent: {why}"),
            )
        };
        let probe = Envelope {
            message_id: "lienthong-report-signing-check".to_owned(),
            from: from.to_owned(),
            ..Default::default()
        };
        let signed = signing::sign_envelope(&probe, &self.key, &self.chain)?;
        let verified = signed
            .signatures
            .first()
            .ok_or_else(|| cannot("the key made no signature".to_owned()))
            .and_then(|sig| {
                let pae = signing::pae(&signed.payload_type, &signed.payload);
                signing::verify_signature(sig, &pae, anchors, UnixTime::now()).map_err(|e| {
                    Error::new(
                        e.reason(),
                        format!(
                            "reports.send_to is set but the monthly report cannot be sent: its \
                             signing key and certificate (reports.signing_key / signing_cert, or \
                             receipts.key / cert) do not verify: {}",
                            e.message()
                        ),
                    )
                })
            })?;
        let spki = hex::encode(verified.spki_sha256);
        match gw.records().signing_cert(&spki).await? {
            Some(b) if b.organ_id == from => {}
            Some(b) => {
                return Err(cannot(format!(
                    "its certificate ({}) is bound to {}, not to gateway.organ_id {from}; bind a \
                     certificate of {from} with `lienthong directory bind-cert {from} CERT.pem` \
                     and name it in reports.signing_cert",
                    verified.subject, b.organ_id
                )));
            }
            None => {
                return Err(cannot(format!(
                    "its certificate ({}) is not bound to gateway.organ_id {from} in the \
                     directory; run `lienthong directory bind-cert {from} CERT.pem` with it",
                    verified.subject
                )));
            }
        }
        for id in std::iter::once(&self.from).chain(&self.to) {
            if !gw
                .records()
                .agency(id.as_str())
                .await?
                .is_some_and(|a| a.active)
            {
                return Err(Error::new(
                    Reason::NotFound,
                    format!(
                        "reports.send_to is set but the monthly report cannot be sent: {id} is \
                         not an active agency of the directory (lienthong directory list)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The message_id of the report of `period`: the same on every attempt
    /// and every restart, so the transfer log tells whether it was sent.
    pub fn message_id(&self, period: Period) -> String {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("lienthong monthly report|{}|{period}", self.from).as_bytes(),
        );
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_ref()[..16]);
        uuid::Builder::from_custom_bytes(bytes)
            .into_uuid()
            .to_string()
    }
}

/// What [`send_monthly_report`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Sending {
    /// Sent now: the receipt.
    Sent(Box<pb::SendReceipt>),
    /// Sent before (this message_id is in the transfer log): nothing sent.
    AlreadySent { message_id: String },
}

fn paths(dir: &Path, period: Period) -> Vec<(Format, PathBuf)> {
    [Format::Csv, Format::Xlsx]
        .into_iter()
        .map(|f| (f, dir.join(period_file_name(&period.to_string(), f))))
        .collect()
}

/// Writes the report of `period` (CSV and XLSX) into `cfg.dir`, each file
/// written whole under a temporary name and then renamed into place.
/// Returns the paths written.
pub async fn write_monthly_report(
    store: &Store,
    cfg: &MonthlyReports,
    period: Period,
) -> Result<Vec<PathBuf>> {
    let index = super::index_documents(store);
    write_files(store.into(), index, cfg, period).await
}

/// [`write_monthly_report`] over `records`, `index` filling the report
/// columns of old documents before they are read.
async fn write_files(
    records: Records<'_>,
    index: impl Future<Output = Result<u64>>,
    cfg: &MonthlyReports,
    period: Period,
) -> Result<Vec<PathBuf>> {
    let io = |what: String| {
        move |e: std::io::Error| Error::new(Reason::Unavailable, what).with_source(e)
    };
    tokio::fs::create_dir_all(&cfg.dir)
        .await
        .map_err(io(format!(
            "cannot create reports.dir {}",
            cfg.dir.display()
        )))?;
    index.await?;
    let report = summary_in(records, period, &cfg.scope, &cfg.settings, now_micros()).await?;
    let mut written = Vec::new();
    for (format, path) in paths(&cfg.dir, period) {
        let bytes = match format {
            Format::Xlsx => to_xlsx(&report, cfg.lang)?,
            _ => to_csv(&report, cfg.lang)?,
        };
        let tmp = path.with_extension(format!("{}.part", format.extension()));
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(io(format!("cannot write {}", tmp.display())))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(io(format!("cannot rename {} into place", tmp.display())))?;
        written.push(path);
    }
    Ok(written)
}

/// The monthly job for `period`: writes the report files when they are
/// missing, then, with `reports.send_to`, sends them unless they were sent
/// already. Safe to run again: it writes and sends each month once.
pub async fn run_monthly_job(
    gw: &Gateway,
    cfg: &MonthlyReports,
    period: Period,
) -> Result<(Vec<PathBuf>, Option<Sending>)> {
    let missing = paths(&cfg.dir, period).iter().any(|(_, p)| !p.exists());
    let written = if missing {
        write_files(gw.records(), gw.index_documents(), cfg, period).await?
    } else {
        Vec::new()
    };
    let sent = match &cfg.send {
        Some(_) => Some(send_monthly_report(gw, cfg, period).await?),
        None => None,
    };
    Ok((written, sent))
}

/// Largest piece of a report file handed to the pipeline at once.
const CHUNK: usize = 64 * 1024;

/// Sends the report files of `period` (already in `cfg.dir`) as one
/// document from the gateway's agency to `reports.send_to`, through the one
/// pipeline (`begin_send`, `write_chunk`, `finish`), unless its message_id
/// is already in the database.
pub async fn send_monthly_report(
    gw: &Gateway,
    cfg: &MonthlyReports,
    period: Period,
) -> Result<Sending> {
    let Some(s) = &cfg.send else {
        return Err(Error::malformed(
            "reports.send_to is not set: there is nobody to send the monthly report to",
        ));
    };
    let message_id = s.message_id(period);
    if gw
        .records()
        .message(s.from.as_str(), &message_id)
        .await?
        .is_some()
    {
        return Ok(Sending::AlreadySent { message_id });
    }
    let mut files = Vec::new();
    for (format, path) in paths(&cfg.dir, period) {
        let bytes = tokio::fs::read(&path).await.map_err(|e| {
            Error::new(
                Reason::Unavailable,
                format!("cannot read the monthly report {}", path.display()),
            )
            .with_source(e)
        })?;
        let name = period_file_name(&period.to_string(), format);
        files.push((name, format, bytes));
    }
    let now = now_micros();
    let today = lienthong_types::calendar::local_date(now);
    let words = match period {
        Period::Month(y, m) => format!("tháng {:02}/{y}", m as u8),
        other => format!("kỳ {other}"),
    };
    let document = pb::Document {
        document_id: format!(
            "{},{:04}/{:02}/{:02},{message_id}",
            s.from,
            today.year(),
            today.month() as u8,
            today.day()
        ),
        promulgation_date: lienthong_types::calendar::iso_date(today),
        type_name: "Báo cáo".to_owned(),
        subject: format!("Báo cáo tình hình gửi, nhận văn bản điện tử qua trục liên thông {words}"),
        content: format!(
            "Báo cáo tự động của trục liên thông văn bản {words}: số văn bản đã gửi, nhận, đã \
             chuyển, đã xác nhận, bị từ chối, trạng thái xử lý và thời gian xử lý của từng cơ \
             quan ({}). Số liệu chi tiết trong tệp Excel và CSV đính kèm.",
            cfg.scope
        ),
        attachments: files
            .iter()
            .map(|(name, format, bytes)| pb::AttachmentRef {
                name: name.clone(),
                content_type: format.content_type().to_owned(),
                size: bytes.len() as u64,
                sha256: ring::digest::digest(&ring::digest::SHA256, bytes)
                    .as_ref()
                    .to_vec()
                    .into(),
                description: match format {
                    Format::Xlsx => "Báo cáo (Excel)".to_owned(),
                    _ => "Báo cáo (CSV, UTF-8)".to_owned(),
                },
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let envelope = Envelope {
        message_id: message_id.clone(),
        from: s.from.as_str().to_owned(),
        to: s.to().map(str::to_owned).collect(),
        created_at: Some(prost_types::Timestamp {
            seconds: now.div_euclid(1_000_000),
            nanos: (now.rem_euclid(1_000_000) * 1000) as i32,
        }),
        body: Some(pb::envelope::Body::Document(document)),
        ..Default::default()
    };
    let signed = signing::sign_envelope(&envelope, &s.key, &s.chain)?;
    let len = signed.encoded_len();
    let caller = Caller::new(s.from.as_str(), Transport::Cli);
    let sub = match gw.begin_send(&caller, signed, len).await {
        Ok(sub) => sub,
        // Sent meanwhile by another gateway process on the same database.
        Err(e) if e.reason() == Reason::DuplicateConflict => {
            return Ok(Sending::AlreadySent { message_id });
        }
        Err(e) => return Err(e),
    };
    if sub.is_duplicate() {
        return Ok(Sending::AlreadySent { message_id });
    }
    let mut sub = sub;
    for (i, (_, _, bytes)) in files.iter().enumerate() {
        for chunk in bytes.chunks(CHUNK) {
            sub.write_chunk(i as u32, chunk).await?;
        }
    }
    let receipt = sub.finish().await?;
    Ok(Sending::Sent(Box::new(receipt)))
}

/// Unix microseconds of the next first-of-month midnight (Vietnam time).
fn next_month_start(now: i64) -> i64 {
    let (_, end) = Period::month_of(now).bounds();
    end
}

/// Runs until `shutdown`: writes last month's report when it is missing
/// and sends it when `reports.send_to` asks and it was not sent yet, then
/// sleeps until the next month begins (waking at least hourly, so a clock
/// change or a failed attempt is caught up).
pub async fn run_monthly_reports(
    gw: Gateway,
    cfg: MonthlyReports,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    loop {
        let now = now_micros();
        let period = Period::previous_month(now);
        match run_monthly_job(&gw, &cfg, period).await {
            Ok((files, sent)) => {
                for f in files {
                    tracing::info!(period = %period, file = %f.display(), "monthly report written");
                }
                if let Some(Sending::Sent(r)) = sent {
                    tracing::info!(period = %period, message_id = %r.message_id, from = %r.from, "monthly report sent as a document");
                }
            }
            Err(e) => {
                tracing::error!(period = %period, reason = e.reason().as_str(), error = %e.chain(), "the monthly report could not be written or sent; trying again within the hour");
            }
        }
        let wake = (next_month_start(now) + 60_000_000).min(now + 3_600_000_000);
        let sleep = Duration::from_micros((wake - now_micros()).max(1_000_000) as u64);
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}
