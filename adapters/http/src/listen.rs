//! Serving the router over plain TCP or over TLS (the same rustls set-up
//! and reload as gRPC, `lienthong-tls`), with the peer's address and, over
//! TLS, the client certificate it presented handed to every request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use lienthong_tls::{ConnectionLimits, RefusedConnections, ReloadingTls, TlsConnection};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The chain the client presented in the TLS handshake (leaf first),
    /// proven by its key but not yet judged: `ReloadingTls::verify_client`
    /// does that when it is used to log in.
    pub client_chain: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl Connected<IncomingStream<'_, TcpListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        PeerInfo {
            addr: *stream.remote_addr(),
            client_chain: None,
        }
    }
}

impl Connected<IncomingStream<'_, TlsIncoming>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, TlsIncoming>) -> Self {
        stream.remote_addr().clone()
    }
}

/// TLS connections whose handshakes `ReloadingTls::incoming` completed.
pub struct TlsIncoming {
    rx: ReceiverStream<Result<TlsConnection, std::io::Error>>,
    local: SocketAddr,
}

impl Listener for TlsIncoming {
    type Io = TlsConnection;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.rx.next().await {
                Some(Ok(conn)) => {
                    let info = conn.info().clone();
                    let client_chain = info.certs.filter(|c| !c.is_empty());
                    return (
                        conn,
                        PeerInfo {
                            addr: info.remote,
                            client_chain,
                        },
                    );
                }
                Some(Err(e)) => tracing::info!(error = %e, "an HTTPS connection failed"),
                // The accepting task is gone: nothing more will come.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(PeerInfo {
            addr: self.local,
            client_chain: None,
        })
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<PeerInfo>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// [`serve`] over TLS: `tls` offers h2 and http/1.1 and asks for an
/// optional client certificate (operators who log in with one); handshakes
/// and connections are bounded per peer as on the gRPC listener.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    limits: ConnectionLimits,
    refused: RefusedConnections,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let incoming = TlsIncoming {
        rx: tls.incoming(listener, limits, refused),
        local,
    };
    axum::serve(
        incoming,
        router.into_make_service_with_connect_info::<PeerInfo>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
