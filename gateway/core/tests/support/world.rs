//! A gateway driven in-process as agency software would drive it: a dev CA,
//! agencies with their own signing keys bound in the directory, documents
//! and status notices signed and sent through the one pipeline, inboxes
//! drained and acknowledged.
//!
//! Shared by the reports' unit tests, the store's report acceptance test
//! and the HTTP adapter's tests; the includer puts the core crate in scope
//! as `lt`, and needs `lienthong-pki` with its `dev` feature.
#![allow(dead_code)]

use std::path::Path;

use lienthong_pki::devpki::{DevCa, KeyType};
use lienthong_proto::v1::{self as pb, Delivery, Envelope, SendReceipt, SignedEnvelope};
use prost::Message as _;

use super::lt;
use lt::error::{Reason, Result};
use lt::pipeline::{Caller, Gateway, Limits, Settings, Transport};
use lt::rows::{AgencyRow, SigningCertRow};
use lt::signing::{SigningKey, TrustAnchors};

pub struct Agent {
    pub id: String,
    pub name: String,
    key: SigningKey,
    /// The key as PKCS#8 PEM, for a second `SigningKey` of the agency.
    key_pem: String,
    chain: Vec<Vec<u8>>,
}

pub struct World {
    pub gw: Gateway,
    /// The gateway's database, for what a test reads or changes beside it.
    pub store: lt::store::Store,
    pub agents: Vec<Agent>,
    anchors: TrustAnchors,
}

/// What a generated document carries.
#[derive(Debug, Clone, Default)]
pub struct Doc {
    pub code_number: String,
    pub code_notation: String,
    pub subject: String,
    /// `yyyy-MM-dd` or empty.
    pub due_date: String,
}

fn caller(id: &str) -> Caller {
    Caller::new(id, Transport::Grpc)
}

impl World {
    /// Opens a gateway on `db_url` with these agencies (code, name), each
    /// with an ECDSA P-256 signing certificate bound to it.
    pub async fn open(
        db_url: &str,
        storage: &Path,
        agencies: &[(String, String)],
    ) -> Result<World> {
        let ca = DevCa::generate("Lienthong test CA", KeyType::EcP256)?;
        let anchors = TrustAnchors::from_der_certs([ca.cert_der()])?;
        let store = lt::store::Store::connect(db_url, lt::store::WriterId::main()).await?;
        let blobs = lt::blobs::BlobStore::open(storage).await?;
        let gw = Gateway::from_parts(
            store.clone(),
            blobs,
            Settings {
                gateway_id: "lienthong-test".to_owned(),
                database_url: db_url.to_owned(),
                storage_path: storage.to_path_buf(),
                anchors: anchors.clone(),
                limits: Limits::default(),
                ..Settings::default()
            },
        );
        let now = time::OffsetDateTime::now_utc();
        let validity = (
            now - time::Duration::hours(1),
            now + time::Duration::days(400),
        );
        let mut rows = Vec::with_capacity(agencies.len());
        let mut agents = Vec::with_capacity(agencies.len());
        let mut certs = Vec::with_capacity(agencies.len());
        for (id, name) in agencies {
            let issued = ca.issue_signing(id, name, KeyType::EcP256, validity)?;
            let key = SigningKey::from_pkcs8_pem(&issued.key_pem, None)?;
            let info = lt::signing::describe_certificate(&issued.cert_der)?;
            certs.push(SigningCertRow {
                spki_sha256: hex::encode(info.spki_sha256),
                organ_id: id.clone(),
                subject: info.subject,
                issuer: info.issuer,
                not_after: info.not_after.unix_timestamp(),
                cert_der: issued.cert_der.clone(),
                bound_at: lt::store::now_micros(),
            });
            rows.push(AgencyRow {
                organ_id: id.clone(),
                name: name.clone(),
                parent: None,
                email: String::new(),
                telephone: String::new(),
                address: String::new(),
                website: String::new(),
                channel: "grpc".to_owned(),
                active: true,
                extra: "{}".to_owned(),
                updated_at: lt::store::now_micros(),
                source: None,
            });
            agents.push(Agent {
                id: id.clone(),
                name: name.clone(),
                key,
                key_pem: issued.key_pem.clone(),
                chain: issued.chain_der,
            });
        }
        store
            .change_directory(lt::store::DirectoryChange {
                agencies: rows,
                bind_signing: certs,
                ..Default::default()
            })
            .await?;
        Ok(World {
            gw,
            store,
            agents,
            anchors,
        })
    }

    pub fn id(&self, i: usize) -> &str {
        &self.agents[i].id
    }

    /// Agency `i`'s signing key and chain (leaf first), as its software holds them.
    pub fn signing(&self, i: usize) -> Result<(SigningKey, Vec<Vec<u8>>)> {
        let a = &self.agents[i];
        Ok((
            SigningKey::from_pkcs8_pem(&a.key_pem, None)?,
            a.chain.clone(),
        ))
    }

    /// The trust anchors the gateway was opened with (the test CA).
    pub fn anchors(&self) -> &TrustAnchors {
        &self.anchors
    }

    fn sign(&self, signer: usize, env: &Envelope) -> Result<SignedEnvelope> {
        let a = &self.agents[signer];
        lt::signing::sign_envelope(env, &a.key, &a.chain)
    }

    /// Sends an envelope as agency `as_agent`, signed by `signer`.
    pub async fn submit(
        &self,
        as_agent: usize,
        signer: usize,
        env: &Envelope,
    ) -> Result<SendReceipt> {
        let signed = self.sign(signer, env)?;
        let len = signed.encoded_len();
        let sub = self
            .gw
            .begin_send(&caller(self.id(as_agent)), signed, len)
            .await?;
        sub.finish().await
    }

    /// A document from `from` to `to`; returns (message_id, document_id).
    pub async fn send_document(
        &self,
        from: usize,
        to: &[usize],
        doc: &Doc,
    ) -> Result<(String, String)> {
        let message_id = uuid::Uuid::new_v4().to_string();
        let document_id = format!(
            "{},{}/{},{}",
            self.id(from),
            doc.code_number,
            doc.code_notation,
            message_id
        );
        let env = Envelope {
            message_id: message_id.clone(),
            from: self.id(from).to_owned(),
            to: to.iter().map(|t| self.id(*t).to_owned()).collect(),
            created_at: None,
            body: Some(pb::envelope::Body::Document(pb::Document {
                document_id: document_id.clone(),
                code_number: doc.code_number.clone(),
                code_notation: doc.code_notation.clone(),
                subject: doc.subject.clone(),
                due_date: doc.due_date.clone(),
                ..Default::default()
            })),
            ..Default::default()
        };
        self.submit(from, from, &env).await?;
        Ok((message_id, document_id))
    }

    /// A status notice from `from` answering `doc_from`'s document.
    pub async fn send_status(
        &self,
        from: usize,
        doc_from: usize,
        document_id: &str,
        code: &str,
    ) -> Result<String> {
        let message_id = uuid::Uuid::new_v4().to_string();
        let env = Envelope {
            message_id: message_id.clone(),
            from: self.id(from).to_owned(),
            to: vec![self.id(doc_from).to_owned()],
            created_at: None,
            body: Some(pb::envelope::Body::Status(pb::StatusNotice {
                document_id: document_id.to_owned(),
                document_from: self.id(doc_from).to_owned(),
                code: code.to_owned(),
                ..Default::default()
            })),
            ..Default::default()
        };
        self.submit(from, from, &env).await?;
        Ok(message_id)
    }

    /// Takes everything in `who`'s inbox; acknowledges it when `ack`.
    pub async fn drain(&self, who: usize, ack: bool) -> Result<Vec<Delivery>> {
        let c = caller(self.id(who));
        let mut inbox = self.gw.inbox(&c, false);
        let mut out = Vec::new();
        while let Some(d) = inbox.next().await? {
            if ack {
                self.gw.ack(&c, &d.delivery_id).await?;
            }
            out.push(d);
        }
        Ok(out)
    }

    /// A refused submission from `from`; returns the reason it got.
    /// `kind`: 0 unknown recipient, 1 signed with another agency's key,
    /// 2 no message_id.
    pub async fn refused(&self, from: usize, kind: u32) -> Reason {
        let other = (from + 1) % self.agents.len();
        let mut env = Envelope {
            message_id: uuid::Uuid::new_v4().to_string(),
            from: self.id(from).to_owned(),
            to: vec![self.id(other).to_owned()],
            body: Some(pb::envelope::Body::Document(pb::Document {
                document_id: "refused".to_owned(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let signer = match kind {
            0 => {
                env.to = vec!["000.00.99.Z99".to_owned()];
                from
            }
            1 => other,
            _ => {
                env.message_id.clear();
                from
            }
        };
        match self.submit(from, signer, &env).await {
            Ok(_) => panic!("a submission meant to be refused was accepted"),
            Err(e) => e.reason(),
        }
    }
}
