//! What operators may do through the gateway (the gRPC `Admin` service):
//! manage the directory and check the transfer log. Every call first checks
//! that the caller is an operator; a refusal is `PERMISSION_DENIED`, logged.

use lienthong_proto::v1::{Agency, BoundCert};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::{Caller, Gateway};
use crate::directory::{self, ChangedBy, ClientRole};
use crate::error::{Error, Reason, Result};
use crate::organ_id::{IdPolicy, OrganId};
use crate::rows::AgencyRow;
use crate::store::{LogVerification, now_micros};

impl Gateway {
    /// Reading the reports, traces and the directory is for the gateway's
    /// operators; anyone else is refused `PERMISSION_DENIED`, logged.
    pub async fn require_operator(&self, caller: &Caller, what: &str) -> Result<()> {
        if caller.is_operator() {
            return Ok(());
        }
        let err = Error::new(
            Reason::PermissionDenied,
            format!(
                "{what} is for the gateway's operators; {} is an agency",
                caller.organ_id
            ),
        );
        Err(self.refuse(Some(caller), "", err).await)
    }

    /// Changing the directory is for `admin` operators; a `viewer` only reads.
    pub(crate) async fn require_admin(&self, caller: &Caller, what: &str) -> Result<()> {
        if caller.is_admin() {
            return Ok(());
        }
        if !caller.is_operator() {
            return self.require_operator(caller, what).await;
        }
        let err = Error::new(
            Reason::PermissionDenied,
            format!(
                "{what} is for the gateway's admins; operator {} is a viewer",
                caller.organ_id
            ),
        );
        Err(self.refuse(Some(caller), "", err).await)
    }

    /// Adds or replaces an agency of the directory.
    pub async fn admin_upsert_agency(&self, caller: &Caller, a: Agency) -> Result<Agency> {
        self.require_admin(caller, "changing the directory").await?;
        let id = OrganId::parse_with(&a.organ_id, IdPolicy::Lenient)?;
        if a.name.trim().is_empty() {
            return Err(Error::malformed("an agency needs a name"));
        }
        let parent = if a.parent.is_empty() {
            id.parent().map(|p| p.as_str().to_owned())
        } else {
            Some(
                OrganId::parse_with(&a.parent, IdPolicy::Lenient)?
                    .as_str()
                    .to_owned(),
            )
        };
        let channel = match a.channel.as_str() {
            "" | "grpc" => "grpc",
            "amqp" => "amqp",
            other => {
                return Err(Error::malformed(format!(
                    "channel {other:?} is neither grpc nor amqp"
                )));
            }
        };
        let row = AgencyRow {
            organ_id: id.as_str().to_owned(),
            name: a.name.trim().to_owned(),
            parent,
            email: a.email,
            telephone: a.telephone,
            address: a.address,
            website: a.website,
            channel: channel.to_owned(),
            active: a.active,
            extra: "{}".to_owned(),
            updated_at: now_micros(),
            source: None,
        };
        directory::upsert_agency(self.store(), row, &ChangedBy::caller(caller)).await?;
        self.lookup(id.as_str()).await
    }

    /// Binds a document-signing certificate to an agency.
    pub async fn admin_bind_signing_cert(
        &self,
        caller: &Caller,
        organ_id: &str,
        certificate: &[u8],
    ) -> Result<BoundCert> {
        self.require_admin(caller, "binding certificates").await?;
        let row = directory::bind_signing_cert(
            self.store(),
            organ_id,
            der_of(certificate)?,
            &ChangedBy::caller(caller),
        )
        .await?;
        Ok(bound(
            row.organ_id,
            row.subject,
            row.spki_sha256,
            row.not_after,
        ))
    }

    /// Binds a client (system) certificate for mutual TLS to an agency.
    pub async fn admin_bind_client_cert(
        &self,
        caller: &Caller,
        organ_id: &str,
        certificate: &[u8],
    ) -> Result<BoundCert> {
        self.require_admin(caller, "binding certificates").await?;
        let row = directory::bind_client_cert(
            self.store(),
            organ_id,
            der_of(certificate)?,
            ClientRole::Agency,
            &ChangedBy::caller(caller),
        )
        .await?;
        Ok(bound(
            row.organ_id,
            row.subject,
            row.spki_sha256,
            row.not_after,
        ))
    }

    /// Grants or revokes a representation; whether anything changed.
    pub async fn admin_represent(
        &self,
        caller: &Caller,
        agent: &str,
        principal: &str,
        revoke: bool,
    ) -> Result<bool> {
        self.require_admin(caller, "changing representations")
            .await?;
        directory::represent(
            self.store(),
            agent,
            principal,
            revoke,
            &ChangedBy::caller(caller),
        )
        .await
    }

    /// Walks the transfer log's hash chains and checks its checkpoints.
    pub async fn admin_verify_log(&self, caller: &Caller) -> Result<LogVerification> {
        self.require_operator(caller, "checking the transfer log")
            .await?;
        self.verify_log().await
    }
}

/// A certificate given as DER or as PEM text.
fn der_of(bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.starts_with(b"-----BEGIN") {
        CertificateDer::from_pem_slice(bytes)
            .map(|c| c.to_vec())
            .map_err(|e| Error::malformed(format!("the certificate is not readable PEM: {e}")))
    } else {
        Ok(bytes.to_vec())
    }
}

fn bound(organ_id: String, subject: String, spki: String, not_after: i64) -> BoundCert {
    BoundCert {
        organ_id,
        subject,
        spki_sha256: spki,
        not_after: Some(prost_types::Timestamp {
            seconds: not_after,
            nanos: 0,
        }),
    }
}
