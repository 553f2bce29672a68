//! Managing the directory: importing agencies, binding and unbinding
//! certificates, deactivating and activating agencies, representations.
//!
//! Every change is written with its line in the transfer log
//! (`directory_changed`: who, what, when) in one transaction
//! ([`Store::change_directory`]). The running gateway keeps no copy of the
//! directory: it reads agencies and bindings from the database on every
//! call, so a change made here — by the command line, another process — is
//! seen by the next call (see `Gateway::standing` for calls already under
//! way).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use lienthong_store::rows;

use crate::caller::{Caller, Transport};
use crate::directory_csv::{AgencyRow, RowProblem, read_directory_csv};
use crate::error::{Error, OrErr, Reason, Result};
use crate::organ_id::{IdPolicy, OrganId};
use crate::store::{DirectoryChange, EventKind, NewEvent, Store, now_micros};
use lienthong_pki::signing::{describe_certificate, load_certificate_pem};

/// Who changes the directory, as the transfer log names them.
#[derive(Debug, Clone)]
pub struct ChangedBy {
    /// `cli:<OS user>` for the command line; the operator's name over gRPC.
    pub actor: String,
    pub transport: Transport,
}

impl ChangedBy {
    /// The command line, run by `user` on the gateway's machine.
    pub fn cli(user: &str) -> ChangedBy {
        ChangedBy {
            actor: format!("cli:{user}"),
            transport: Transport::Cli,
        }
    }

    /// An operator calling the gateway (the gRPC `Admin` service).
    pub fn caller(caller: &Caller) -> ChangedBy {
        ChangedBy {
            actor: caller.organ_id.clone(),
            transport: caller.transport,
        }
    }

    pub(crate) fn line(&self, sender: &str, detail: String) -> NewEvent {
        NewEvent {
            kind: EventKind::DirectoryChanged,
            sender: sender.to_owned(),
            message_id: String::new(),
            recipient: None,
            reason: None,
            detail,
            actor: Some(self.actor.clone()),
            transport: self.transport.as_str().to_owned(),
        }
    }
}

/// What an import did, or would have done.
#[derive(Debug, Default)]
pub struct ImportOutcome {
    /// Rows written (0 when the import was refused).
    pub imported: usize,
    /// Certificates bound from the `signing_cert` and `client_cert` columns.
    pub certificates_bound: usize,
    /// Every bad row, with its line number and reason.
    pub problems: Vec<RowProblem>,
    /// False when bad rows stopped the import (no `--skip-invalid`).
    pub applied: bool,
    /// Agencies the import deactivated (their row says `active` false).
    pub deactivated: Vec<String>,
    /// Inactive agencies the import activated again (their row says, or
    /// leaves empty, `active`).
    pub activated: Vec<String>,
}

/// Reads a directory CSV, validates every row, and imports the good ones in
/// one transaction — or nothing at all when a row is bad and `skip_invalid`
/// is false. A row replaces the agency's record, `active` included: an
/// import can deactivate an agency, or activate one again. Each agency
/// added or changed, each certificate binding that changes and each
/// representation granted is a line in the transfer log, and the import as
/// a whole one more (the file and its SHA-256).
pub async fn import_csv(
    store: &Store,
    path: &Path,
    skip_invalid: bool,
    policy: IdPolicy,
    by: &ChangedBy,
) -> Result<ImportOutcome> {
    let file = std::fs::File::open(path).or_err_with(Reason::NotFound, |_| {
        format!("cannot open the directory file {}", path.display())
    })?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let mut hashed = HashingReader::new(file);
    let (rows, problems) = read_directory_csv(&mut hashed, base, policy)?;
    let file_sha256 = hashed.finish();
    apply_import(
        store,
        path,
        file_sha256.as_ref(),
        rows,
        problems,
        skip_invalid,
        by,
    )
    .await
}

/// [`import_csv`] of a file the caller has read already (and checked, e.g.
/// against its signature, so that what is imported is exactly what was
/// checked): `csv` is the directory as CSV, `path` names the file in the
/// transfer log and is where relative certificate paths start, and
/// `file_sha256` is the SHA-256 of the file as it is on disk (which may be
/// another form of the same rows, e.g. a JSON export).
pub async fn import_csv_data(
    store: &Store,
    csv: &[u8],
    path: &Path,
    file_sha256: &[u8],
    skip_invalid: bool,
    policy: IdPolicy,
    by: &ChangedBy,
) -> Result<ImportOutcome> {
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let (rows, problems) = read_directory_csv(csv, base, policy)?;
    apply_import(store, path, file_sha256, rows, problems, skip_invalid, by).await
}

/// The rows read from `path`, applied (see [`import_csv`]).
async fn apply_import(
    store: &Store,
    path: &Path,
    file_sha256: &[u8],
    rows: Vec<AgencyRow>,
    mut problems: Vec<RowProblem>,
    skip_invalid: bool,
    by: &ChangedBy,
) -> Result<ImportOutcome> {
    // Certificates are read before anything is written, so that a missing
    // file is a row problem, not a half-done import.
    let mut good = Vec::with_capacity(rows.len());
    let mut certs = Vec::new();
    let mut clients = Vec::new();
    // Agencies other gateways keep are theirs: an import cannot change them.
    let foreign: HashMap<String, rows::AgencyRow> = store
        .agencies()
        .await?
        .into_iter()
        .filter(|a| a.source.is_some())
        .map(|a| (a.organ_id.clone(), a))
        .collect();
    for row in rows {
        if let Some(a) = foreign.get(row.organ_id.as_str())
            && let Err(e) = local_only(a)
        {
            problems.push(RowProblem {
                line: row.line,
                organ_id: row.organ_id.as_str().to_owned(),
                reason: e.message().to_owned(),
            });
            continue;
        }
        let signing: Result<Vec<_>> = row
            .signing_cert
            .iter()
            .map(|p| certificate_row(&row.organ_id, p))
            .collect();
        let client = row
            .client_cert
            .as_deref()
            .map(|p| client_row(row.organ_id.as_str(), p, ClientRole::Agency))
            .transpose();
        match (signing, client) {
            (Ok(sc), Ok(cc)) => {
                certs.extend(sc);
                clients.extend(cc);
                good.push(row);
            }
            (Err(e), _) | (_, Err(e)) => problems.push(RowProblem {
                line: row.line,
                organ_id: row.organ_id.as_str().to_owned(),
                reason: e.message().to_owned(),
            }),
        }
    }
    problems.sort_by_key(|p| p.line);
    if !problems.is_empty() && !skip_invalid {
        return Ok(ImportOutcome {
            problems,
            ..Default::default()
        });
    }
    // Rows with problems are not in `good` (nor their certificates in
    // `certs`): a repeated organ_id drops the repeat, not the first row.
    let now = now_micros();
    let models: Vec<rows::AgencyRow> = good.iter().map(|r| agency_model(r, now)).collect();
    let source = format!("an import of {}", path.display());
    let mut change = DirectoryChange::default();
    let mut outcome = ImportOutcome {
        imported: models.len(),
        problems,
        applied: true,
        ..Default::default()
    };
    let before: HashMap<String, rows::AgencyRow> = store
        .agencies()
        .await?
        .into_iter()
        .map(|a| (a.organ_id.clone(), a))
        .collect();
    let (mut added, mut updated) = (0usize, 0usize);
    for m in &models {
        match before.get(&m.organ_id) {
            None => {
                added += 1;
                change.log.push(by.line(
                    &m.organ_id,
                    format!(
                        "added to the directory by {source}: {} (channel {}, {})",
                        m.name,
                        m.channel,
                        if m.active { "active" } else { "inactive" }
                    ),
                ));
            }
            Some(old) => {
                if old.active != m.active {
                    let line = if m.active {
                        outcome.activated.push(m.organ_id.clone());
                        activated_sentence(&m.organ_id, &source)
                    } else {
                        outcome.deactivated.push(m.organ_id.clone());
                        deactivated_sentence(&m.organ_id, &source)
                    };
                    change.log.push(by.line(&m.organ_id, line));
                }
                let fields = changed_fields(old, m);
                if !fields.is_empty() {
                    updated += 1;
                    change.log.push(by.line(
                        &m.organ_id,
                        format!("changed by {source}: {}", fields.join(", ")),
                    ));
                }
            }
        }
    }
    let mut bindings = 0usize;
    let mut bound: Vec<(&str, &str, &[u8], Option<String>)> = Vec::new();
    for c in &certs {
        let old = store
            .signing_cert(&c.spki_sha256)
            .await?
            .map(|o| o.organ_id);
        bound.push(("signing certificate", &c.organ_id, &c.cert_der, old));
    }
    for c in &clients {
        let old = store.client_cert(&c.spki_sha256).await?.map(|o| o.organ_id);
        bound.push((
            "client certificate for mutual TLS",
            &c.organ_id,
            &c.cert_der,
            old,
        ));
    }
    for (what, organ_id, der, old) in bound {
        if let Some(line) = bind_line(what, organ_id, der, old)? {
            bindings += 1;
            change.log.push(by.line(organ_id, line));
        }
    }
    for r in &good {
        for p in &r.represents {
            if !store.represents(r.organ_id.as_str(), p.as_str()).await? {
                change.log.push(by.line(
                    r.organ_id.as_str(),
                    format!("{} may send in the name of {p} ({source})", r.organ_id),
                ));
                change
                    .grant
                    .push((r.organ_id.as_str().to_owned(), p.as_str().to_owned()));
            }
        }
    }
    change.log.push(by.line(
        "",
        format!(
            "directory imported from {} (file sha256 {}): {} row(s), {added} added, {updated} changed, {} deactivated, {} activated again, {bindings} certificate binding(s) new or moved, {} bad row(s) skipped",
            path.display(),
            hex::encode(file_sha256),
            outcome.imported,
            outcome.deactivated.len(),
            outcome.activated.len(),
            outcome.problems.len()
        ),
    ));
    outcome.certificates_bound = certs.len() + clients.len();
    change.agencies = models;
    change.bind_signing = certs;
    change.bind_client = clients;
    store.change_directory(change).await?;
    Ok(outcome)
}

/// Hashes what it reads, to name the exact file an import read.
struct HashingReader<R> {
    inner: R,
    ctx: ring::digest::Context,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    fn finish(self) -> ring::digest::Digest {
        self.ctx.finish()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
}

fn agency_model(r: &AgencyRow, now: i64) -> rows::AgencyRow {
    let extra: BTreeMap<&str, &str> = r
        .extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    rows::AgencyRow {
        organ_id: r.organ_id.as_str().to_owned(),
        name: r.name.clone(),
        parent: r.parent.as_ref().map(|p| p.as_str().to_owned()),
        email: r.email.clone(),
        telephone: r.telephone.clone(),
        address: r.address.clone(),
        website: r.website.clone(),
        channel: r.channel.as_str().to_owned(),
        active: r.active,
        extra: serde_json::to_string(&extra).unwrap_or_else(|_| "{}".to_owned()),
        updated_at: now,
        source: None,
    }
}

/// The fields of an agency's record that differ, `active` aside (it has a
/// line of its own).
fn changed_fields(old: &rows::AgencyRow, new: &rows::AgencyRow) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, a: &str, b: &str| {
        if a != b {
            out.push(format!("{name} {a:?} → {b:?}"));
        }
    };
    field("name", &old.name, &new.name);
    field(
        "parent",
        old.parent.as_deref().unwrap_or(""),
        new.parent.as_deref().unwrap_or(""),
    );
    field("channel", &old.channel, &new.channel);
    field("email", &old.email, &new.email);
    field("telephone", &old.telephone, &new.telephone);
    field("address", &old.address, &new.address);
    field("website", &old.website, &new.website);
    if old.extra != new.extra {
        out.push("extra columns".to_owned());
    }
    out
}

fn deactivated_sentence(organ_id: &str, source: &str) -> String {
    format!(
        "{organ_id} deactivated by {source}: its software can neither send nor receive, and documents addressed to it are refused (UNKNOWN_RECIPIENT), until it is activated again"
    )
}

fn activated_sentence(organ_id: &str, source: &str) -> String {
    format!("{organ_id} activated again by {source}: it may send and receive")
}

/// What the transfer log says of a certificate: subject, key and
/// certificate SHA-256, issuer, validity.
pub fn describe_for_log(der: &[u8]) -> Result<String> {
    let info = describe_certificate(der)?;
    Ok(format!(
        "{} (key sha256 {}, certificate sha256 {}, issued by {}, valid until {})",
        info.subject,
        hex::encode(info.spki_sha256),
        hex::encode(ring::digest::digest(&ring::digest::SHA256, der)),
        info.issuer,
        info.not_after.date()
    ))
}

/// The line of a binding, or `None` when the key was bound there already.
fn bind_line(what: &str, to: &str, der: &[u8], before: Option<String>) -> Result<Option<String>> {
    let cert = describe_for_log(der)?;
    Ok(match before {
        Some(b) if b == to => None,
        Some(b) => Some(format!("{what} bound to {to}, moved from {b}: {cert}")),
        None => Some(format!("{what} bound to {to}: {cert}")),
    })
}

fn certificate_row(organ_id: &OrganId, pem: &Path) -> Result<rows::SigningCertRow> {
    signing_row(organ_id, load_certificate_pem(pem)?)
}

fn signing_row(organ_id: &OrganId, der: Vec<u8>) -> Result<rows::SigningCertRow> {
    let info = describe_certificate(&der)?;
    Ok(rows::SigningCertRow {
        spki_sha256: hex::encode(info.spki_sha256),
        organ_id: organ_id.as_str().to_owned(),
        subject: info.subject,
        issuer: info.issuer,
        not_after: info.not_after.unix_timestamp(),
        cert_der: der,
        bound_at: now_micros(),
    })
}

fn client_row(name: &str, pem: &Path, role: ClientRole) -> Result<rows::ClientCertRow> {
    client_row_der(name, load_certificate_pem(pem)?, role)
}

fn client_row_der(name: &str, der: Vec<u8>, role: ClientRole) -> Result<rows::ClientCertRow> {
    let info = describe_certificate(&der)?;
    Ok(rows::ClientCertRow {
        spki_sha256: hex::encode(info.spki_sha256),
        organ_id: name.to_owned(),
        role: role.as_str().to_owned(),
        subject: info.subject,
        issuer: info.issuer,
        not_after: info.not_after.unix_timestamp(),
        cert_der: der,
        bound_at: now_micros(),
    })
}

/// Refuses to change an agency another gateway keeps (the national
/// directory exchange applies its peer's signed updates to it): its
/// operator can only block it here.
pub(crate) fn local_only(a: &rows::AgencyRow) -> Result<()> {
    match &a.source {
        None => Ok(()),
        Some(peer) => Err(Error::new(
            Reason::PermissionDenied,
            format!(
                "{} is kept by the gateway {peer} (its signed directory updates): it cannot be \
                 changed here; to refuse it or one of its keys locally, use `lienthong directory \
                 block`",
                a.organ_id
            ),
        )),
    }
}

/// An agency of the directory, or `NotFound` saying how to add it.
async fn known_agency(store: &Store, organ_id: &str) -> Result<(OrganId, rows::AgencyRow)> {
    let id = OrganId::parse_with(organ_id, IdPolicy::Lenient)?;
    match store.agency(id.as_str()).await? {
        Some(a) => Ok((id, a)),
        None => Err(Error::new(
            Reason::NotFound,
            format!("{id} is not in the directory; import it first (`lienthong directory import`)"),
        )),
    }
}

/// The subject under which a client certificate is bound: an agency of the
/// directory, or an operator's name.
async fn client_name(store: &Store, name: &str, role: ClientRole) -> Result<String> {
    match role {
        ClientRole::Agency => Ok(known_agency(store, name).await?.0.as_str().to_owned()),
        ClientRole::Operator => {
            // The certificate logs in as that account, with its role: the
            // account must exist first.
            let name = crate::operators::check_name(name)?;
            if crate::operators::active_role(store, name).await?.is_none() {
                return Err(Error::new(
                    Reason::NotFound,
                    format!(
                        "there is no active operator account {name:?}; create it first with `lienthong operator add {name:?} --role viewer|admin` (add --no-password for an account that logs in only with its certificate)"
                    ),
                ));
            }
            Ok(name.to_owned())
        }
    }
}

/// Binds a document-signing certificate to an agency of the directory.
pub async fn bind_signing_cert(
    store: &Store,
    organ_id: &str,
    der: Vec<u8>,
    by: &ChangedBy,
) -> Result<rows::SigningCertRow> {
    let (id, agency) = known_agency(store, organ_id).await?;
    local_only(&agency)?;
    let row = signing_row(&id, der)?;
    let before = store.signing_cert(&row.spki_sha256).await?;
    let mut change = DirectoryChange::default();
    if let Some(line) = bind_line(
        "signing certificate",
        id.as_str(),
        &row.cert_der,
        before.map(|b| b.organ_id),
    )? {
        change.log.push(by.line(id.as_str(), line));
        change.bind_signing.push(row.clone());
        store.change_directory(change).await?;
    }
    Ok(row)
}

/// Binds a client (system) certificate, for mutual TLS, to an agency of the
/// directory (`role = "agency"`) or to an active operator account
/// (`role = "operator"`), whose role then applies.
pub async fn bind_client_cert(
    store: &Store,
    organ_id: &str,
    der: Vec<u8>,
    role: ClientRole,
    by: &ChangedBy,
) -> Result<rows::ClientCertRow> {
    let name = client_name(store, organ_id, role).await?;
    let row = client_row_der(&name, der, role)?;
    let before = store.client_cert(&row.spki_sha256).await?;
    let unchanged = before
        .as_ref()
        .is_some_and(|b| b.organ_id == name && b.role == role.as_str());
    if !unchanged {
        let what = match role {
            ClientRole::Agency => "client certificate for mutual TLS".to_owned(),
            ClientRole::Operator => format!("operator's client certificate of {name}"),
        };
        let moved = before.map(|b| format!("{} {}", b.role, b.organ_id));
        let line = bind_line(&what, &name, &row.cert_der, moved)?
            .unwrap_or_else(|| format!("{what} bound to {name}"));
        let mut change = DirectoryChange::default();
        change.log.push(by.line(role.log_sender(&name), line));
        change.bind_client.push(row.clone());
        store.change_directory(change).await?;
    }
    Ok(row)
}

/// A bound certificate named either by its certificate (PEM file read by
/// the caller) or by the SHA-256 of its key, as `directory certs` lists it.
#[derive(Debug, Clone)]
pub enum CertRef {
    Certificate(Vec<u8>),
    KeySha256(String),
}

impl CertRef {
    /// The key SHA-256 (lowercase hex) this names.
    fn key(&self) -> Result<String> {
        match self {
            CertRef::Certificate(der) => Ok(hex::encode(describe_certificate(der)?.spki_sha256)),
            CertRef::KeySha256(h) => {
                let h: String = h
                    .chars()
                    .filter(|c| *c != ':')
                    .collect::<String>()
                    .to_ascii_lowercase();
                if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(Error::malformed(format!(
                        "{h:?} is not a key SHA-256 (64 hex digits, as `lienthong directory certs` shows it)"
                    )));
                }
                Ok(h)
            }
        }
    }
}

/// Takes a document-signing certificate back from an agency: from the
/// next submission on, a document signed with it is refused
/// `CERTIFICATE_NOT_BOUND`. Its other certificates stay bound.
pub async fn unbind_signing_cert(
    store: &Store,
    organ_id: &str,
    cert: &CertRef,
    by: &ChangedBy,
) -> Result<rows::SigningCertRow> {
    let id = OrganId::parse_with(organ_id, IdPolicy::Lenient)?;
    if let Some(a) = store.agency(id.as_str()).await? {
        local_only(&a)?;
    }
    let key = cert.key()?;
    let bound = match store.signing_cert(&key).await? {
        Some(b) if b.organ_id == id.as_str() => b,
        Some(b) => {
            return Err(Error::new(
                Reason::NotFound,
                format!(
                    "the signing key {key} is bound to {}, not to {id}; nothing was changed",
                    b.organ_id
                ),
            ));
        }
        None => {
            return Err(Error::new(
                Reason::NotFound,
                format!(
                    "the signing key {key} is not bound to any agency; nothing was changed (`lienthong directory certs {id}` lists what is bound)"
                ),
            ));
        }
    };
    let left = store
        .signing_certs_of(id.as_str())
        .await?
        .len()
        .saturating_sub(1);
    let mut change = DirectoryChange::default();
    change.log.push(by.line(
        id.as_str(),
        format!(
            "signing certificate unbound from {id}: {}; documents signed with it are refused CERTIFICATE_NOT_BOUND from now on; {left} other signing certificate(s) stay bound",
            describe_for_log(&bound.cert_der)?
        ),
    ));
    change.unbind_signing.push((key, id.as_str().to_owned()));
    store.change_directory(change).await?;
    Ok(bound)
}

/// Takes a client (system) certificate back from an agency or an operator:
/// the next call made with it is refused, and a `Receive` stream under way
/// ends (see `Gateway::standing`).
pub async fn unbind_client_cert(
    store: &Store,
    name: &str,
    cert: &CertRef,
    role: ClientRole,
    by: &ChangedBy,
) -> Result<rows::ClientCertRow> {
    let name = match role {
        ClientRole::Agency => OrganId::parse_with(name, IdPolicy::Lenient)?
            .as_str()
            .to_owned(),
        ClientRole::Operator => name.trim().to_owned(),
    };
    let key = cert.key()?;
    let whose = |role: &str, n: &str| match ClientRole::parse(role) {
        Some(r) => r.whom(n),
        None => n.to_owned(),
    };
    let bound = match store.client_cert(&key).await? {
        Some(b) if b.organ_id == name && b.role == role.as_str() => b,
        Some(b) => {
            return Err(Error::new(
                Reason::NotFound,
                format!(
                    "the client key {key} is bound to {}, not to {}; nothing was changed",
                    whose(&b.role, &b.organ_id),
                    whose(role.as_str(), &name)
                ),
            ));
        }
        None => {
            return Err(Error::new(
                Reason::NotFound,
                format!(
                    "the client key {key} is not bound to anyone; nothing was changed (`lienthong directory certs {name}` lists what is bound)"
                ),
            ));
        }
    };
    let mut change = DirectoryChange::default();
    change.log.push(by.line(
        role.log_sender(&name),
        format!(
            "client certificate unbound from {}: {}; calls made with it are refused from now on",
            whose(role.as_str(), &name),
            describe_for_log(&bound.cert_der)?
        ),
    ));
    change
        .unbind_client
        .push((key, name.clone(), role.as_str().to_owned()));
    store.change_directory(change).await?;
    Ok(bound)
}

/// Deactivates (`active = false`) or activates again an agency. Whether
/// anything changed: the agency may already be as asked, and then nothing
/// is written.
pub async fn set_active(
    store: &Store,
    organ_id: &str,
    active: bool,
    by: &ChangedBy,
) -> Result<bool> {
    let (id, a) = known_agency(store, organ_id).await?;
    local_only(&a)?;
    if a.active == active {
        return Ok(false);
    }
    let source = "the operators";
    let line = if active {
        activated_sentence(id.as_str(), source)
    } else {
        deactivated_sentence(id.as_str(), source)
    };
    let mut change = DirectoryChange::default();
    change.log.push(by.line(id.as_str(), line));
    change.set_active.push((id.as_str().to_owned(), active));
    store.change_directory(change).await?;
    Ok(true)
}

/// Lets `agent` send in the name of `principal`, or (`revoke`) ends it.
/// Whether anything changed.
pub async fn represent(
    store: &Store,
    agent: &str,
    principal: &str,
    revoke: bool,
    by: &ChangedBy,
) -> Result<bool> {
    let (agent, _) = known_agency(store, agent).await?;
    let (principal, _) = known_agency(store, principal).await?;
    let (a, p) = (agent.as_str().to_owned(), principal.as_str().to_owned());
    let had = store.represents(&a, &p).await?;
    if had != revoke {
        return Ok(false);
    }
    let mut change = DirectoryChange::default();
    if revoke {
        change.log.push(by.line(
            &a,
            format!("{agent} no longer sends in the name of {principal}"),
        ));
        change.revoke.push((a, p));
    } else {
        change
            .log
            .push(by.line(&a, format!("{agent} may send in the name of {principal}")));
        change.grant.push((a, p));
    }
    store.change_directory(change).await?;
    Ok(true)
}

/// Adds an agency to the directory or replaces its record, with a line for
/// what changed (its activation included).
pub async fn upsert_agency(store: &Store, row: rows::AgencyRow, by: &ChangedBy) -> Result<()> {
    let mut change = DirectoryChange::default();
    let source = "the operators";
    let existing = store.agency(&row.organ_id).await?;
    if let Some(old) = &existing {
        local_only(old)?;
    }
    match existing {
        None => change.log.push(by.line(
            &row.organ_id,
            format!(
                "added to the directory by {source}: {} (channel {}, {})",
                row.name,
                row.channel,
                if row.active { "active" } else { "inactive" }
            ),
        )),
        Some(old) => {
            if old.active != row.active {
                let line = if row.active {
                    activated_sentence(&row.organ_id, source)
                } else {
                    deactivated_sentence(&row.organ_id, source)
                };
                change.log.push(by.line(&row.organ_id, line));
            }
            let fields = changed_fields(&old, &row);
            if !fields.is_empty() {
                change.log.push(by.line(
                    &row.organ_id,
                    format!("changed by {source}: {}", fields.join(", ")),
                ));
            }
        }
    }
    change.agencies.push(row);
    store.change_directory(change).await
}

/// Who a client certificate speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    /// An agency's document-management software.
    Agency,
    /// An operator account (`lienthong operator add`): its role decides
    /// what the certificate opens.
    Operator,
}

impl ClientRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Agency => "agency",
            ClientRole::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<ClientRole> {
        match s {
            "agency" => Some(ClientRole::Agency),
            "operator" => Some(ClientRole::Operator),
            _ => None,
        }
    }

    /// Whom a client certificate bound under `name` speaks for, in a
    /// sentence.
    pub fn whom(self, name: &str) -> String {
        match self {
            ClientRole::Agency => name.to_owned(),
            ClientRole::Operator => format!("operator {name}"),
        }
    }

    /// The transfer log's `sender` of a change: the agency, or nobody for
    /// an operator (the detail names them).
    fn log_sender(self, name: &str) -> &str {
        match self {
            ClientRole::Agency => name,
            ClientRole::Operator => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devpki::{DevCa, KeyType};
    use crate::store::WriterId;

    fn issue(ca: &DevCa, organ_id: &str) -> Result<crate::devpki::Issued> {
        let now = time::OffsetDateTime::now_utc();
        ca.issue_signing(
            organ_id,
            "Cơ quan thử",
            KeyType::EcP256,
            (
                now - time::Duration::days(1),
                now + time::Duration::days(30),
            ),
        )
    }

    fn details(events: &[rows::EventRow]) -> Vec<String> {
        events.iter().map(|e| e.detail.clone()).collect()
    }

    /// An import is logged: each agency it adds or deactivates, each
    /// binding it makes, and itself; a repeat of the same file logs only
    /// itself. Client certificates are taken back with their line too.
    #[tokio::test]
    async fn imports_and_unbindings_leave_their_lines() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::connect(
            &format!("sqlite://{}/d.db", dir.path().display()),
            WriterId::main(),
        )
        .await?;
        let ca = DevCa::generate("Directory Test CA", KeyType::EcP256)?;
        let issued = issue(&ca, "000.00.01.H35")?;
        let der = issued.cert_der.clone();
        std::fs::write(dir.path().join("a.pem"), &issued.cert_pem)?;
        let csv = dir.path().join("d.csv");
        let write = |active_b: &str| {
            std::fs::write(
                &csv,
                format!(
                    "organ_id,name,active,signing_cert,client_cert\n\
                     000.00.01.H35,Văn phòng UBND tỉnh,,a.pem,a.pem\n\
                     000.00.12.H35,Sở KH&CN,{active_b},,\n"
                ),
            )
        };
        let by = ChangedBy::cli("clerk");
        write("")?;
        let out = import_csv(&store, &csv, false, IdPolicy::Strict, &by).await?;
        assert!(out.applied && out.deactivated.is_empty());
        let all = store
            .events_of_kind(EventKind::DirectoryChanged, None, 100)
            .await?;
        // Two agencies added, two bindings, the import itself.
        assert_eq!(all.len(), 5, "{:?}", details(&all));
        assert!(all[0].detail.contains("directory imported from"));
        assert!(all[0].detail.contains("2 added"), "{}", all[0].detail);

        write("false")?;
        let out = import_csv(&store, &csv, false, IdPolicy::Strict, &by).await?;
        assert_eq!(out.deactivated, ["000.00.12.H35"]);
        let b = store
            .events_of_kind(EventKind::DirectoryChanged, Some("000.00.12.H35"), 10)
            .await?;
        assert!(
            b[0].detail.contains("deactivated by an import"),
            "{:?}",
            details(&b)
        );
        let all = store
            .events_of_kind(EventKind::DirectoryChanged, None, 100)
            .await?;
        assert_eq!(all.len(), 7, "{:?}", details(&all));

        let key = hex::encode(describe_certificate(&der)?.spki_sha256);
        let unbound = unbind_client_cert(
            &store,
            "000.00.01.H35",
            &CertRef::KeySha256(key.to_uppercase()),
            ClientRole::Agency,
            &by,
        )
        .await?;
        assert_eq!(unbound.spki_sha256, key);
        assert!(store.client_cert(&key).await?.is_none());
        // The signing binding of the same key is another thing: it stays.
        assert!(store.signing_cert(&key).await?.is_some());
        let wrong = unbind_client_cert(
            &store,
            "op",
            &CertRef::Certificate(der.clone()),
            ClientRole::Operator,
            &by,
        )
        .await;
        assert_eq!(wrong.err().map(|e| e.reason()), Some(Reason::NotFound));
        let bad = CertRef::KeySha256("abc".into()).key();
        assert_eq!(bad.err().map(|e| e.reason()), Some(Reason::Malformed));
        assert_eq!(store.verify_log().await?.first_broken(), None);
        Ok(())
    }

    /// A copy accepted for an agency that reads its own queue, which is
    /// deactivated before the relay publishes it, is held in the outbox
    /// (`PERMISSION_DENIED`, retried) until the agency is activated again.
    #[tokio::test]
    async fn copies_for_a_deactivated_queue_agency_are_held() -> Result<()> {
        use crate::pipeline::{Gateway, Settings};
        let dir = tempfile::tempdir()?;
        let store = Store::connect(
            &format!("sqlite://{}/q.db", dir.path().display()),
            WriterId::main(),
        )
        .await?;
        let q = "000.00.31.H35";
        let row = |active| rows::AgencyRow {
            organ_id: q.to_owned(),
            name: "UBND huyện".to_owned(),
            parent: None,
            email: String::new(),
            telephone: String::new(),
            address: String::new(),
            website: String::new(),
            channel: "amqp".to_owned(),
            active,
            extra: "{}".to_owned(),
            updated_at: now_micros(),
            source: None,
        };
        let by = ChangedBy::cli("clerk");
        upsert_agency(&store, row(true), &by).await?;
        let gw = Gateway::from_parts(
            store.clone(),
            crate::blobs::BlobStore::unopened(dir.path()),
            Settings::default(),
        );
        let outbox = crate::pipeline::OutboxEntry {
            id: 1,
            delivery_pk: 1,
            message_pk: 404,
            exchange: String::new(),
            routing_key: crate::routing::agency_queue(q),
            attempts: 0,
        };
        assert!(set_active(&store, q, false, &by).await?);
        let held = gw.outbound(outbox.clone()).await.err();
        assert_eq!(held.map(|e| e.reason()), Some(Reason::PermissionDenied));
        assert!(set_active(&store, q, true, &by).await?);
        // Active again, the row goes on to its message (missing here).
        let next = gw.outbound(outbox).await.err();
        assert_eq!(next.map(|e| e.reason()), Some(Reason::NotFound));
        Ok(())
    }
}
