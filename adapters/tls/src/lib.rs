//! TLS for the gateway's listeners (gRPC, and HTTPS for operators), with
//! certificates and keys that reload without a restart.
//!
//! The TLS handshake proves that the client holds the private key of the
//! certificate it presents; whether that certificate chains to
//! `tls.client_anchors`, is valid now, and is bound to an agency is checked
//! per request ([`ReloadingTls::verify_client`], with the revocation lists
//! of `trust.crls`, and the directory binding),
//! so that each refusal reaches the caller as a gRPC status with a reason
//! and a sentence, and is written to the transfer log — instead of a bare
//! TLS alert nobody can read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use lienthong_core::error::Error;
use lienthong_core::peers::PeerKey;
use lienthong_metrics::{Counter, Family, ReasonLabel, Registry};
use lienthong_pki::signing::TrustAnchors;
use rustls::DistinguishedName;
use rustls::crypto::CryptoProvider;
use rustls::server::ServerConfig;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
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
    /// `[trust]`'s revocation lists and policy, applied to client
    /// certificates too (see [`ReloadingTls::check_revocation_with`]).
    revocation: OnceLock<TrustAnchors>,
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
            revocation: OnceLock::new(),
        }))
    }

    /// Judges client certificates against the revocation lists of
    /// `trust.crls` too, under the `[trust]` policy (stale lists, unknown
    /// status), as document-signing certificates are; clones of `trust`
    /// share its lists, so their reloads apply here. Set once, at start.
    pub fn check_revocation_with(&self, trust: TrustAnchors) {
        let _ = self.revocation.set(trust);
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
    /// anchors, for client authentication, now, and against the revocation
    /// lists when [`ReloadingTls::check_revocation_with`] gave them. Returns
    /// the SHA-256 of the leaf's SubjectPublicKeyInfo: the key the directory
    /// binds to an agency. A refusal carries its reason
    /// (`CERTIFICATE_REVOKED`, `UNTRUSTED_CERTIFICATE` for a list that
    /// cannot settle it, else `PERMISSION_DENIED`) and a sentence.
    pub fn verify_client(&self, chain: &[CertificateDer<'_>]) -> Result<[u8; 32], Error> {
        let loaded = self.current();
        lienthong_pki::signing::verify_client_chain(
            chain,
            &loaded.anchors,
            self.provider.signature_verification_algorithms.all,
            self.revocation.get(),
            UnixTime::now(),
        )
    }

    /// Accepts TCP connections and completes TLS handshakes concurrently, so
    /// that one slow client cannot hold up the others, within `limits`: a
    /// connection over them is closed at once (counted in
    /// `lienthong_connections_refused_total`), before any byte of TLS.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        limits: ConnectionLimits,
        refused: RefusedConnections,
    ) -> ReceiverStream<Result<TlsConnection, std::io::Error>> {
        let (tx, rx) = mpsc::channel(64);
        let me = Arc::clone(self);
        let handshakes = Arc::new(Semaphore::new(limits.handshakes.max(1)));
        let peer_handshakes = PeerSlots::new(limits.handshakes_per_peer);
        let peer_connections = PeerSlots::new(limits.connections_per_peer);
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
                let key = PeerKey::of(peer.ip());
                // Dropping `tcp` closes it: over a limit, nothing is read.
                let Some(connection) = peer_connections.take(key) else {
                    refused.count(peer, "peer_connections");
                    continue;
                };
                let Some(handshake) = peer_handshakes.take(key) else {
                    refused.count(peer, "peer_handshakes");
                    continue;
                };
                let Ok(in_flight) = handshakes.clone().try_acquire_owned() else {
                    refused.count(peer, "handshakes");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(me.current().config.clone());
                let tx = tx.clone();
                let refused = refused.clone();
                let timeout = limits.handshake_timeout;
                tokio::spawn(async move {
                    let accepted = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
                    drop((handshake, in_flight));
                    match accepted {
                        Ok(Ok(stream)) => {
                            let certs = stream.get_ref().1.peer_certificates().map(|c| {
                                Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())
                            });
                            let conn = TlsConnection {
                                stream,
                                info: ClientInfo {
                                    remote: peer,
                                    certs,
                                },
                                _slot: connection,
                            };
                            let _ = tx.send(Ok(conn)).await;
                        }
                        Ok(Err(e)) => {
                            refused.inc("handshake_failed");
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            refused.inc("handshake_timeout");
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// `lienthong_connections_refused`: connections closed before any call,
/// on every TLS listener of the gateway (register it once, and give each
/// listener a clone).
#[derive(Clone, Debug)]
pub struct RefusedConnections(Family<ReasonLabel, Counter>);

impl RefusedConnections {
    pub fn register(registry: &Registry) -> RefusedConnections {
        RefusedConnections(registry.counters(
            "lienthong_connections_refused",
            "Connections to the gRPC listener closed before any call: peer_handshakes, handshakes, peer_connections (over a limit), handshake_failed, handshake_timeout",
        ))
    }

    /// `why` is one of the closed set of the metric's help.
    fn inc(&self, why: &'static str) {
        self.0.get_or_create(&ReasonLabel::new(why)).inc();
    }

    fn count(&self, peer: SocketAddr, why: &'static str) {
        self.inc(why);
        tracing::debug!(%peer, limit = why, "connection closed at once: over a connection limit");
    }
}

/// Bounds on connections, before and after the TLS handshake. Zero turns a
/// per-peer bound off.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Handshakes in progress at once from one peer (an IPv4 address or an
    /// IPv6 /64).
    pub handshakes_per_peer: usize,
    /// Handshakes in progress at once from every peer together.
    pub handshakes: usize,
    /// Connections open at once from one peer, handshakes included.
    pub connections_per_peer: usize,
    /// A handshake not finished by then is dropped.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            handshakes_per_peer: 16,
            handshakes: 512,
            connections_per_peer: 256,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Counts per peer, each entry gone once its count is back to zero, so the
/// map holds only peers with something open.
#[derive(Debug)]
struct PeerSlots {
    max: usize,
    // A plain map; never held across an await.
    counts: Mutex<HashMap<PeerKey, usize>>,
}

impl PeerSlots {
    fn new(max: usize) -> Arc<PeerSlots> {
        Arc::new(PeerSlots {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn take(self: &Arc<Self>, key: PeerKey) -> Option<PeerSlot> {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_default();
        if self.max > 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            slots: Arc::clone(self),
            key,
        })
    }
}

/// One place among a peer's; given back when dropped.
#[derive(Debug)]
struct PeerSlot {
    slots: Arc<PeerSlots>,
    key: PeerKey,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.slots.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// What a call learns of its connection: the peer's address and the
/// certificates it presented in the handshake (leaf first).
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub remote: SocketAddr,
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// An accepted TLS connection; its place among its peer's connections is
/// given back when the server drops it.
#[derive(Debug)]
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: ClientInfo,
    _slot: PeerSlot,
}

impl TlsConnection {
    /// Who is at the other end: the peer's address and the certificates it
    /// presented.
    pub fn info(&self) -> &ClientInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = ClientInfo;

    fn connect_info(&self) -> ClientInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
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
            hints.push(root_hint(&a));
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

/// The name a CertificateRequest lists for an anchor: a DER `Name`, its
/// SEQUENCE included. webpki keeps only the Name's contents, and OpenSSL and
/// BoringSSL clients (Java, .NET, PHP, Node, Python grpcio) abort the
/// handshake on a list they cannot parse.
fn root_hint(anchor: &rustls_pki_types::TrustAnchor<'_>) -> DistinguishedName {
    DistinguishedName::in_sequence(anchor.subject.as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;
    use lienthong_pki::devpki::{DevCa, KeyType};
    use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

    /// What OpenSSL's `parse_ca_names` does with each name of a
    /// CertificateRequest: `d2i_X509_NAME`, the whole entry, nothing left.
    #[test]
    fn every_hint_is_a_der_name_equal_to_its_anchors_subject() {
        for (cn, kt) in [
            ("Cơ quan chứng thực gốc thử nghiệm", KeyType::EcP256),
            ("Test Root CA", KeyType::EcP384),
        ] {
            let ca = DevCa::generate(cn, kt).unwrap();
            let der = CertificateDer::from(ca.cert_der().to_vec());
            let anchor = webpki::anchor_from_trusted_cert(&der).unwrap();
            let hint = root_hint(&anchor);
            let (rest, name) = X509Name::from_der(hint.as_ref())
                .unwrap_or_else(|e| panic!("the hint for {cn} is not a DER Name: {e}"));
            assert!(rest.is_empty(), "bytes after the Name of {cn}");
            let (_, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
            assert_eq!(name.as_raw(), cert.subject().as_raw());
            assert!(name.to_string().contains(cn), "{name}");
        }
    }

    #[test]
    fn peer_slots_are_bounded_and_given_back() {
        let slots = PeerSlots::new(2);
        let a = PeerKey::of([10, 0, 0, 1].into());
        let b = PeerKey::of([10, 0, 0, 2].into());
        let one = slots.take(a);
        let two = slots.take(a);
        assert!(one.is_some() && two.is_some());
        assert!(slots.take(a).is_none(), "a third for the same peer");
        assert!(slots.take(b).is_some(), "another peer has its own");
        drop(one);
        assert!(slots.take(a).is_some());
        drop(two);
        assert!(
            slots.counts.lock().unwrap().is_empty(),
            "nothing is kept for peers with nothing open"
        );
    }
}
