//! Managing the directory: importing agencies and binding signing
//! certificates to them. The running gateway reads the directory from the
//! database on every submission, so a change is seen at once, without a
//! restart.

use std::collections::BTreeMap;
use std::path::Path;

use lienthong_schema::entity::{agency, client_cert, signing_cert};

use crate::directory_csv::{AgencyRow, RowProblem, read_directory_csv};
use crate::error::{Error, Reason, Result};
use crate::organ_id::{IdPolicy, OrganId};
use crate::signing::{describe_certificate, load_certificate_pem};
use crate::store::{Store, now_micros};

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
}

/// Reads a directory CSV, validates every row, and imports the good ones in
/// one transaction — or nothing at all when a row is bad and `skip_invalid`
/// is false.
pub async fn import_csv(
    store: &Store,
    path: &Path,
    skip_invalid: bool,
    policy: IdPolicy,
) -> Result<ImportOutcome> {
    let file = std::fs::File::open(path).map_err(|e| {
        Error::new(
            Reason::NotFound,
            format!("cannot open the directory file {}", path.display()),
        )
        .with_source(e)
    })?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let (rows, mut problems) = read_directory_csv(file, base, policy)?;

    // Certificates are read before anything is written, so that a missing
    // file is a row problem, not a half-done import.
    let mut good = Vec::with_capacity(rows.len());
    let mut certs = Vec::new();
    let mut clients = Vec::new();
    for row in rows {
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
    let models: Vec<agency::Model> = good.iter().map(|r| agency_model(r, now)).collect();
    let imported = models.len();
    let certificates_bound = certs.len() + clients.len();
    let representations: Vec<(String, String)> = good
        .iter()
        .flat_map(|r| {
            r.represents
                .iter()
                .map(|p| (r.organ_id.as_str().to_owned(), p.as_str().to_owned()))
        })
        .collect();
    store
        .import_directory(models, certs, clients, representations)
        .await?;
    Ok(ImportOutcome {
        imported,
        certificates_bound,
        problems,
        applied: true,
    })
}

fn agency_model(r: &AgencyRow, now: i64) -> agency::Model {
    let extra: BTreeMap<&str, &str> = r
        .extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    agency::Model {
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
    }
}

fn certificate_row(organ_id: &OrganId, pem: &Path) -> Result<signing_cert::Model> {
    signing_row(organ_id, load_certificate_pem(pem)?)
}

fn signing_row(organ_id: &OrganId, der: Vec<u8>) -> Result<signing_cert::Model> {
    let info = describe_certificate(&der)?;
    Ok(signing_cert::Model {
        spki_sha256: hex::encode(info.spki_sha256),
        organ_id: organ_id.as_str().to_owned(),
        subject: info.subject,
        issuer: info.issuer,
        not_after: info.not_after.unix_timestamp(),
        cert_der: der,
        bound_at: now_micros(),
    })
}

fn client_row(name: &str, pem: &Path, role: ClientRole) -> Result<client_cert::Model> {
    client_row_der(name, load_certificate_pem(pem)?, role)
}

fn client_row_der(name: &str, der: Vec<u8>, role: ClientRole) -> Result<client_cert::Model> {
    let info = describe_certificate(&der)?;
    Ok(client_cert::Model {
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

/// Binds a document-signing certificate to an agency of the directory.
pub async fn bind_signing_cert(
    store: &Store,
    organ_id: &str,
    der: Vec<u8>,
) -> Result<signing_cert::Model> {
    let id = OrganId::parse_with(organ_id, IdPolicy::Lenient)?;
    if store.agency(id.as_str()).await?.is_none() {
        return Err(Error::new(
            Reason::NotFound,
            format!("{id} is not in the directory; import it first (`lienthong directory import`)"),
        ));
    }
    let row = signing_row(&id, der)?;
    store.bind_signing_cert(row.clone()).await?;
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
) -> Result<client_cert::Model> {
    let name = match role {
        ClientRole::Agency => {
            let id = OrganId::parse_with(organ_id, IdPolicy::Lenient)?;
            if store.agency(id.as_str()).await?.is_none() {
                return Err(Error::new(
                    Reason::NotFound,
                    format!(
                        "{id} is not in the directory; import it first (`lienthong directory import`)"
                    ),
                ));
            }
            id.as_str().to_owned()
        }
        ClientRole::Operator => {
            // The certificate logs in as that account, with its role: the
            // account must exist first.
            let name = crate::operators::check_name(organ_id)?;
            if crate::operators::active_role(store, name).await?.is_none() {
                return Err(Error::new(
                    Reason::NotFound,
                    format!(
                        "there is no active operator account {name:?}; create it first with `lienthong operator add {name:?} --role viewer|admin` (add --no-password for an account that logs in only with its certificate)"
                    ),
                ));
            }
            name.to_owned()
        }
    };
    let row = client_row_der(&name, der, role)?;
    store.bind_client_cert(row.clone()).await?;
    Ok(row)
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
}
