//! TLS for the gateway's listeners (gRPC, and HTTPS for operators), with
//! certificates and keys that reload without a restart.
//!
//! The TLS handshake proves that the client holds the private key of the
//! certificate it presents; whether that certificate chains to
//! `tls.client_anchors`, is valid now, and is bound to an agency is checked
//! per request ([`ReloadingTls::verify_client`] and the directory binding),
//! so that each refusal reaches the caller as a gRPC status with a reason
//! and a sentence, and is written to the transfer log — instead of a bare
//! TLS alert nobody can read.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::DistinguishedName;
use rustls::crypto::CryptoProvider;
use rustls::server::ServerConfig;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// Whether a listener requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every connection presents one (the gRPC listener under `auth.mode =
    /// "mtls"`): agency software is identified by nothing else.
    Required,
    /// A client may present one, or log in another way (the HTTP listener:
    /// operators with a bound certificate, or a password).
    Optional,
}

/// The application protocols a listener offers in the handshake (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2 only: gRPC.
    Grpc,
    /// HTTP/2 and HTTP/1.1: browsers, curl, Prometheus.
    Web,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Grpc => vec![b"h2".to_vec()],
            Alpn::Web => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// The files a TLS listener is made of.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// PEM files of the authorities client certificates must chain to.
    pub client_anchors: Vec<PathBuf>,
    /// Whether a client certificate is required.
    pub client_auth: ClientAuth,
    /// What the listener speaks.
    pub alpn: Alpn,
}

struct Loaded {
    config: Arc<ServerConfig>,
    anchors: Arc<Vec<rustls_pki_types::TrustAnchor<'static>>>,
    stamps: Vec<Option<SystemTime>>,
}

/// The current TLS configuration, re-read when its files change.
pub struct ReloadingTls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    // Swapped whole; never held across an await.
    loaded: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish()
    }
}

impl ReloadingTls {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<ReloadingTls>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load(&files, &provider)?;
        Ok(Arc::new(ReloadingTls {
            files,
            provider,
            loaded: RwLock::new(Arc::new(loaded)),
        }))
    }

    fn current(&self) -> Arc<Loaded> {
        match self.loaded.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Re-reads the files when their modification times change. A file that
    /// no longer loads keeps the previous configuration in force, loudly.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let now = stamps(&me.files);
                if now == me.current().stamps {
                    continue;
                }
                match load(&me.files, &me.provider) {
                    Ok(l) => {
                        let mut g = match me.loaded.write() {
                            Ok(g) => g,
                            Err(p) => p.into_inner(),
                        };
                        *g = Arc::new(l);
                        tracing::info!("TLS certificates and client anchors reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS files changed but do not load; keeping the previous ones");
                        // Do not retry until they change again.
                        let cur = me.current();
                        let mut g = match me.loaded.write() {
                            Ok(g) => g,
                            Err(p) => p.into_inner(),
                        };
                        *g = Arc::new(Loaded {
                            config: cur.config.clone(),
                            anchors: cur.anchors.clone(),
                            stamps: now,
                        });
                    }
                }
            }
        });
    }

    /// Checks a client's certificate chain (leaf first) against the client
    /// anchors, for client authentication, now. Returns the SHA-256 of the
    /// leaf's SubjectPublicKeyInfo: the key the directory binds to an agency.
    pub fn verify_client(&self, chain: &[CertificateDer<'_>]) -> Result<[u8; 32], String> {
        let Some(leaf) = chain.first() else {
            return Err("no client certificate was presented; mutual TLS requires one".to_owned());
        };
        let loaded = self.current();
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| format!("the client certificate cannot be read: {e}"))?;
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &loaded.anchors,
            &chain[1..],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertExpired { .. } => {
                "the client certificate has expired; renew it".to_owned()
            }
            webpki::Error::CertNotValidYet { .. } => {
                "the client certificate is not valid yet; check the clocks".to_owned()
            }
            webpki::Error::UnknownIssuer => {
                "the client certificate is not issued by an authority this gateway trusts (tls.client_anchors)".to_owned()
            }
            other => format!("the client certificate is not acceptable: {other}"),
        })?;
        lienthong_core::signing::spki_sha256(leaf.as_ref())
            .map_err(|e| format!("the client certificate cannot be read: {}", e.message()))
    }

    /// Accepts TCP connections and completes TLS handshakes concurrently, so
    /// that one slow client cannot hold up the others.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (tx, rx) = mpsc::channel(64);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    break;
                }
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(me.current().config.clone());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    std::iter::once(&files.cert)
        .chain(std::iter::once(&files.key))
        .chain(files.client_anchors.iter())
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

fn load(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<Loaded, String> {
    let stamps = stamps(files);
    let chain = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("cannot read the private key {}: {e}", files.key.display()))?;
    let mut anchors = Vec::new();
    let mut hints = Vec::new();
    for p in &files.client_anchors {
        for der in read_certs(p)? {
            let a = webpki::anchor_from_trusted_cert(&der)
                .map_err(|e| format!("{} is not a usable trust anchor: {e}", p.display()))?
                .to_owned();
            hints.push(DistinguishedName::from(a.subject.as_ref().to_vec()));
            anchors.push(a);
        }
    }
    if anchors.is_empty() && files.client_auth == ClientAuth::Required {
        return Err(
            "tls.client_anchors names no certificate: mutual TLS needs at least one".to_owned(),
        );
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let builder = if anchors.is_empty() {
        builder.with_no_client_auth()
    } else {
        builder.with_client_cert_verifier(Arc::new(DeferredClientCert {
            provider: provider.clone(),
            hints,
            mandatory: files.client_auth == ClientAuth::Required,
        }))
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "the server certificate {} and key {} do not go together: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = files.alpn.protocols();
    Ok(Loaded {
        config: Arc::new(config),
        anchors: Arc::new(anchors),
        stamps,
    })
}

/// Requires a client certificate and checks the handshake signature made
/// with its key; the chain is judged per request (see the module docs).
#[derive(Debug)]
struct DeferredClientCert {
    provider: Arc<CryptoProvider>,
    hints: Vec<DistinguishedName>,
    mandatory: bool,
}

impl ClientCertVerifier for DeferredClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }
}
