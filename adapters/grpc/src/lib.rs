//! The gRPC adapter: `lienthong.v1.Exchange` and `lienthong.v1.Directory`
//! over the core's one pipeline, plus the standard health and reflection
//! services.
//!
//! API boundary: this crate turns requests into calls on
//! [`lienthong_core::pipeline::Gateway`] and the core's [`Error`] into a
//! gRPC status carrying `google.rpc.ErrorInfo {reason, domain: "lienthong"}`.
//! It does not validate, route or persist anything itself.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lienthong_core::error::{Error, Reason};
use lienthong_core::pipeline::{Admission, Caller, Gateway, Transport};
use lienthong_proto::v1::{
    self as pb, admin_server::AdminServer, directory_server::DirectoryServer,
    exchange_server::ExchangeServer, reports_server::ReportsServer, send_request::Item,
};
use prost::Message as _;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Extensions;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TcpIncoming};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};

pub use lienthong_edxml::Policy;

/// The metadata key that names the caller in `dev-header` mode.
pub const ORGAN_ID_HEADER: &str = "x-organ-id";

/// Largest attachment chunk a client may send, and the size we send.
pub const MAX_CHUNK_BYTES: usize = 4 * 1024 * 1024;
const FETCH_CHUNK_BYTES: usize = 64 * 1024;

/// A unary handler of a `#[tonic::async_trait]` service: the caller
/// identified, `body` run with the gateway, the caller and the request's
/// message, and its outcome mapped once ([`Shared::answer`]). Written as
/// the method `async_trait` itself makes of an `async fn`, so that it may
/// stand among the service's other methods; `self` is passed in because a
/// macro's own `self` is not the caller's.
macro_rules! unary {
    ($this:ident . $name:ident($req:ty) -> $resp:ty =
        |$gw:pat_param, $caller:pat_param, $r:pat_param| $body:expr) => {
        fn $name<'life0, 'async_trait>(
            &'life0 $this,
            request: ::tonic::Request<$req>,
        ) -> ::std::pin::Pin<
            Box<
                dyn ::std::future::Future<
                        Output = Result<::tonic::Response<$resp>, ::tonic::Status>,
                    > + Send
                    + 'async_trait,
            >,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                $this
                    .shared
                    .answer(request, async |$gw, $caller, $r| $body)
                    .await
            })
        }
    };
}

mod edxml; // edXML packages through the pipeline
pub mod limits;
mod notices; // Maintenance notices on Receive
pub mod reports;
pub use lienthong_tls as tls;

/// How the caller's identity is established.
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// Trust the `x-organ-id` request header. For trying it out only.
    DevHeader,
    /// Mutual TLS: the identity comes only from the directory's binding of
    /// the client certificate's key.
    Mtls(Arc<tls::ReloadingTls>),
}

/// The gateway's error as the gRPC status it travels as: the code of its
/// reason ([`code_of`]), its sentence, and `google.rpc.ErrorInfo` with the
/// reason code and whether a retry can help. Every handler answers through
/// this one mapping.
pub trait IntoStatus {
    type Output;
    fn into_status(self) -> Self::Output;
}

impl IntoStatus for Error {
    type Output = Status;
    fn into_status(self) -> Status {
        let code = code_of(self.reason());
        let mut meta = HashMap::new();
        meta.insert("retryable".to_owned(), self.is_retryable().to_string());
        let details = ErrorDetails::with_error_info(self.reason().as_str(), "lienthong", meta);
        Status::with_error_details(code, self.message(), details)
    }
}

impl<T> IntoStatus for Result<T, Error> {
    type Output = Result<T, Status>;
    fn into_status(self) -> Result<T, Status> {
        self.map_err(Error::into_status)
    }
}

/// The gRPC code each reason travels with: what a generic client should do.
pub fn code_of(r: Reason) -> Code {
    match r {
        Reason::BadIdentifier
        | Reason::Malformed
        | Reason::DigestMismatch
        | Reason::BadSignature
        | Reason::DocumentUnsigned
        | Reason::DocumentSignatureInvalid
        | Reason::SecretDocument => Code::InvalidArgument,
        Reason::UntrustedCertificate
        | Reason::CertificateExpired
        | Reason::CertificateRevoked
        | Reason::CertificateNotBound
        | Reason::UnknownSender => Code::FailedPrecondition,
        Reason::UnknownRecipient | Reason::NotFound | Reason::NotRoutable => Code::NotFound,
        Reason::SenderMismatch | Reason::PermissionDenied => Code::PermissionDenied,
        Reason::DuplicateConflict => Code::AlreadyExists,
        Reason::SizeLimit | Reason::RateLimited => Code::ResourceExhausted,
        Reason::Unavailable => Code::Unavailable,
        Reason::Internal => Code::Internal,
    }
}

#[derive(Clone)]
struct Shared {
    gw: Gateway,
    auth: AuthMode,
    edxml_policy: Policy,
    /// The agency code this gateway writes in an edXML TraceHeader.
    trace_organ_id: String,
    limiter: Arc<limits::AgencyLimiter>,
    /// Calls per peer, before identification.
    peers: Arc<limits::PeerLimiter>,
    /// The pace an upload stream must keep.
    upload: limits::UploadLimits,
    /// Turns true when the gateway starts to stop: health says NOT_SERVING
    /// and following `Receive` streams end with `UNAVAILABLE`, so that
    /// agencies' software reconnects (to another replica) at once.
    stopping: Arc<watch::Sender<bool>>,
}

/// What a following stream is told when the gateway stops.
const STOPPING: &str = "this gateway is stopping (a restart or an upgrade); connect again — another replica, or this one once it is back, carries on where this stream ended: nothing unacknowledged is lost";

/// HTTP/2 flow-control windows: what one stream, and one connection, may
/// send before the gateway has read it. A 1 GiB upload on a loaded machine
/// went at 120–175 MB/s with 1 MiB / 2 MiB (the sender waiting for window
/// updates, the gateway mostly idle), 310–450 MB/s with these; a connection
/// can still make the gateway hold at most 8 MiB.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// Largest edXML package put inline in a `Delivery` (DELIVERY_FORMAT_EDXML).
const INLINE_EDXML_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;

impl Shared {
    /// The authenticated caller, within its rate limits.
    ///
    /// Refuse before you write: the peer's rate is checked first, and a call
    /// whose caller cannot be identified is answered and counted
    /// ([`Gateway::refuse_unauthenticated`]), never written to the transfer
    /// log call by call. Only an identified caller's refusals are logged one
    /// by one.
    async fn caller(&self, meta: &MetadataMap, ext: &Extensions) -> Result<Caller, Status> {
        let peer = peer_of(ext).map(|a| a.ip());
        if let Err(e) = self.peers.call(peer) {
            return Err(self
                .gw
                .refuse_unauthenticated(Transport::Grpc, peer, e)
                .into_status());
        }
        let caller = match self.identify(meta, ext).await {
            Ok(c) => c,
            // An outage is not the caller's doing: answered as one.
            Err(e) if e.reason() == Reason::Unavailable => return Err(e.into_status()),
            Err(e) => {
                let e = self.gw.refuse_unauthenticated(Transport::Grpc, peer, e);
                return Err(unauthenticated(&e));
            }
        };
        self.or_refuse(&caller, self.limiter.call(&caller.organ_id))
            .await?;
        Ok(caller)
    }

    /// The identified caller (see [`Shared::caller`]) and the request's
    /// message.
    async fn open<R>(&self, request: Request<R>) -> Result<(Caller, R), Status> {
        let caller = self
            .caller(request.metadata(), request.extensions())
            .await?;
        Ok((caller, request.into_inner()))
    }

    /// Answers a unary call: identifies the caller, runs `f` with the
    /// gateway, the caller and the request's message, and maps the outcome.
    async fn answer<R, T>(
        &self,
        request: Request<R>,
        f: impl AsyncFnOnce(&Gateway, &Caller, R) -> Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        let (caller, r) = self.open(request).await?;
        f(&self.gw, &caller, r)
            .await
            .map(Response::new)
            .into_status()
    }

    /// An identified caller's request refused when `r` is an error: logged,
    /// then answered.
    async fn or_refuse<T>(&self, caller: &Caller, r: Result<T, Error>) -> Result<T, Status> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(self.gw.refuse(Some(caller), "", e).await.into_status()),
        }
    }

    /// A slot for one more open stream of the caller's.
    async fn stream_slot(&self, caller: &Caller) -> Result<Option<OwnedSemaphorePermit>, Status> {
        self.or_refuse(caller, self.limiter.stream(&caller.organ_id))
            .await
    }

    /// Begins an upload (`rpc`: "Send", "SendEdxml"): the caller
    /// identified, the submission admitted and the caller's stream slot
    /// taken (both held by the returned [`Held`]), the stream on its clock.
    async fn upload<T>(
        &self,
        request: Request<Streaming<T>>,
        rpc: &'static str,
    ) -> Result<(Caller, Held, Upload<T>), Status> {
        let (caller, stream) = self.open(request).await?;
        let admission = self.gw.admit().into_status()?;
        let slot = self.stream_slot(&caller).await?;
        let upload = Upload {
            stream,
            clock: limits::UploadClock::start(self.upload),
            rpc,
        };
        let held = Held {
            _admission: admission,
            _slot: slot,
        };
        Ok((caller, held, upload))
    }

    /// Answers a server stream: sends what `source` yields to the caller
    /// from a task of its own, holding the caller's stream slot until it
    /// ends. An error is sent as its status and ends the stream; a caller
    /// who hangs up stops it. The channel lets the source read a few items
    /// ahead of the network.
    async fn stream_to_caller<T: Send + 'static>(
        &self,
        caller: &Caller,
        source: impl futures::Stream<Item = Result<T, Error>> + Send + 'static,
    ) -> Result<Response<ReceiverStream<Result<T, Status>>>, Status> {
        let slot = self.stream_slot(caller).await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _slot = slot;
            let mut source = std::pin::pin!(source);
            while let Some(item) = source.next().await {
                let last = item.is_err();
                if tx.send(item.into_status()).await.is_err() || last {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn identify(&self, meta: &MetadataMap, ext: &Extensions) -> Result<Caller, Error> {
        match &self.auth {
            AuthMode::Mtls(tls) => {
                let certs = ext.get::<tls::ClientInfo>().and_then(|i| i.certs.clone());
                let chain: &[CertificateDer<'static>] =
                    certs.as_deref().map(Vec::as_slice).unwrap_or(&[]);
                let spki = tls.verify_client(chain)?;
                self.gw.identify_client(&spki, Transport::Grpc).await
            }
            AuthMode::DevHeader => {
                let id = meta
                    .get(ORGAN_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|s| !s.is_empty());
                match id {
                    Some(id) => self.gw.identify_named(id, Transport::Grpc).await,
                    None => Err(Error::new(
                        Reason::PermissionDenied,
                        "no caller identity: send your agency code in the x-organ-id request header",
                    )),
                }
            }
        }
    }
}

/// The peer's address: from the TLS listener's connection, or plain TCP.
fn peer_of(ext: &Extensions) -> Option<std::net::SocketAddr> {
    ext.get::<tls::ClientInfo>()
        .map(|i| i.remote)
        .or_else(|| ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()))
}

/// "Who are you" refusals keep their reason but travel as UNAUTHENTICATED.
fn unauthenticated(e: &Error) -> Status {
    Status::with_error_details(
        Code::Unauthenticated,
        e.message(),
        ErrorDetails::with_error_info(e.reason().as_str(), "lienthong", HashMap::new()),
    )
}

/// `lienthong.v1.Exchange`.
#[derive(Clone)]
pub struct ExchangeService {
    shared: Shared,
}

/// `lienthong.v1.Directory`.
#[derive(Clone)]
pub struct DirectoryService {
    shared: Shared,
}

/// `lienthong.v1.Admin`: operators only.
#[derive(Clone)]
pub struct AdminService {
    shared: Shared,
}

/// What a certificate bound to an agency is for.
enum CertUse {
    Signing,
    Client,
}

impl AdminService {
    async fn bind(
        &self,
        request: Request<pb::BindCertRequest>,
        cert_use: CertUse,
    ) -> Result<Response<pb::BoundCert>, Status> {
        self.shared
            .answer(request, async |gw, caller, r| match cert_use {
                CertUse::Signing => {
                    gw.admin_bind_signing_cert(caller, &r.organ_id, &r.certificate)
                        .await
                }
                CertUse::Client => {
                    gw.admin_bind_client_cert(caller, &r.organ_id, &r.certificate)
                        .await
                }
            })
            .await
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    unary!(self.upsert_agency(pb::Agency) -> pb::Agency =
        |gw, caller, a| gw.admin_upsert_agency(caller, a).await);

    async fn bind_signing_cert(
        &self,
        request: Request<pb::BindCertRequest>,
    ) -> Result<Response<pb::BoundCert>, Status> {
        self.bind(request, CertUse::Signing).await
    }

    async fn bind_client_cert(
        &self,
        request: Request<pb::BindCertRequest>,
    ) -> Result<Response<pb::BoundCert>, Status> {
        self.bind(request, CertUse::Client).await
    }

    unary!(self.represent(pb::RepresentRequest) -> pb::RepresentResponse =
    |gw, caller, r| {
        let changed = gw
            .admin_represent(caller, &r.agent, &r.principal, r.revoke)
            .await?;
        Ok(pb::RepresentResponse { changed })
    });

    unary!(self.verify_log(pb::VerifyLogRequest) -> pb::VerifyLogResponse =
    |gw, caller, _| {
        let v = gw.admin_verify_log(caller).await?;
        let (broken_chain, broken_at, problem) = v
            .first_broken()
            .map(|(c, seq, what)| (c.to_owned(), seq, what.to_owned()))
            .unwrap_or_default();
        let chains = v
            .chains
            .iter()
            .map(|c| {
                let (head_seq, head_hash) = c.head.clone().unwrap_or_default();
                let (broken_at, problem) = c.first_broken.clone().unwrap_or_default();
                pb::LogChain {
                    name: c.chain.clone(),
                    checked: c.checked,
                    has_head: c.head.is_some(),
                    head_seq,
                    head_hash,
                    intact: c.first_broken.is_none(),
                    broken_at,
                    problem,
                }
            })
            .collect();
        let findings = v
            .findings
            .iter()
            .map(|f| pb::LogFinding {
                chain: f.chain.clone(),
                seq: f.seq,
                problem: f.what.clone(),
            })
            .collect();
        Ok(pb::VerifyLogResponse {
            intact: v.intact(),
            checked: v.checked(),
            unchained: v.unchained,
            broken_at,
            problem,
            chains,
            broken_chain,
            checkpoints: v.checkpoints.read,
            checkpoints_verified: v.checkpoints.verified,
            checkpoints_unsigned: v.checkpoints.unsigned,
            checkpoints_unchecked: v.checkpoints.unchecked,
            findings,
        })
    });
}

#[tonic::async_trait]
impl pb::exchange_server::Exchange for ExchangeService {
    // What the streaming calls answer with: bounded channels, so a slow
    // reader holds up its own stream only.
    type ReceiveStream = ReceiverStream<Result<pb::Delivery, Status>>;
    type FetchAttachmentStream = ReceiverStream<Result<pb::AttachmentChunk, Status>>;
    type FetchEdxmlStream = ReceiverStream<Result<pb::EdxmlChunk, Status>>;

    async fn send(
        &self,
        request: Request<Streaming<pb::SendRequest>>,
    ) -> Result<Response<pb::SendReceipt>, Status> {
        let s = &self.shared;
        let (caller, _held, mut upload) = s.upload(request, "Send").await?;
        let first = upload
            .next("the first message of the Send stream")
            .await
            .and_then(|m| match m {
                Some(pb::SendRequest {
                    item: Some(Item::Envelope(env)),
                }) => Ok(env),
                Some(_) => Err(Error::malformed(
                    "the first message of a Send stream must carry the signed envelope",
                )),
                None => Err(Error::malformed(
                    "the Send stream ended before the signed envelope",
                )),
            });
        let first = s.or_refuse(&caller, first).await?;
        let len = first.encoded_len();
        upload.clock.add(len);
        let mut sub = s.gw.begin_send(&caller, first, len).await.into_status()?;
        loop {
            let e = match upload.next("an attachment chunk").await {
                Ok(Some(pb::SendRequest {
                    item: Some(Item::Chunk(c)),
                })) => {
                    upload.clock.add(c.data.len());
                    sub.write_chunk(c.index, &c.data).await.into_status()?;
                    continue;
                }
                Ok(None) => break,
                Ok(Some(_)) => Error::malformed(
                    "only attachment chunks may follow the envelope on a Send stream",
                ),
                Err(e) => e,
            };
            return Err(sub.abort(e).await.into_status());
        }
        let receipt = sub.finish().await.into_status()?;
        Ok(Response::new(receipt))
    }

    async fn receive(
        &self,
        request: Request<pb::ReceiveRequest>,
    ) -> Result<Response<Self::ReceiveStream>, Status> {
        let (caller, req) = self.shared.open(request).await?;
        let mut inbox = self.shared.gw.inbox(&caller, req.follow).with_max(req.max);
        let (tx, rx) = mpsc::channel(4);
        let as_edxml = req.format == pb::DeliveryFormat::Edxml as i32;
        let slot = self.shared.stream_slot(&caller).await?;
        let gw = self.shared.gw.clone();
        let hop = self.shared.trace_organ_id.clone();
        let notices = self.shared.gw.notice_feed().await;
        let mut stopping = self.shared.stopping.subscribe();
        tokio::spawn(async move {
            let _slot = slot;
            // Notices (maintenance windows) first, then beside the deliveries.
            let Some(_following) = notices::start(notices, &tx, req.follow).await else {
                return;
            };
            let mut sent: u32 = 0;
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = futures::FutureExt::map(stopping.wait_for(|s| *s), |_| ()) => {
                        let _ = tx.send(Err(Status::unavailable(STOPPING))).await;
                        break;
                    }
                    next = inbox.next() => match next {
                        Ok(Some(mut d)) => {
                            if as_edxml {
                                render_inline(&gw, &hop, &caller, &mut d).await;
                            }
                            if tx.send(Ok(d)).await.is_err() {
                                break;
                            }
                            sent += 1;
                            if req.max > 0 && sent >= req.max {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(e.into_status())).await;
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    unary!(self.ack(pb::AckRequest) -> pb::AckResponse = |gw, caller, r| {
        gw.ack(caller, &r.delivery_id).await?;
        Ok(pb::AckResponse {})
    });

    async fn fetch_attachment(
        &self,
        request: Request<pb::FetchAttachmentRequest>,
    ) -> Result<Response<Self::FetchAttachmentStream>, Status> {
        let (caller, req) = self.shared.open(request).await?;
        let reader = self
            .shared
            .gw
            .fetch_attachment(&caller, &req.from, &req.message_id, req.index)
            .await
            .into_status()?;
        let index = req.index;
        let chunks = futures::stream::try_unfold(reader, move |mut reader| async move {
            let next = reader.next_chunk(FETCH_CHUNK_BYTES).await?;
            Ok(next.map(|data| {
                let chunk = pb::AttachmentChunk {
                    index,
                    data: data.into(),
                };
                (chunk, reader)
            }))
        });
        self.shared.stream_to_caller(&caller, chunks).await
    }

    async fn send_edxml(
        &self,
        request: Request<Streaming<pb::EdxmlChunk>>,
    ) -> Result<Response<pb::SendReceipt>, Status> {
        let (caller, _held, mut upload) = self.shared.upload(request, "SendEdxml").await?;
        let shared = &self.shared;
        let (tx, reader) = edxml::chunk_channel(8);
        // The first chunk may name the message_id; read it before decoding.
        let first = upload
            .next("the first chunk of the edXML package")
            .await
            .and_then(|m| {
                m.ok_or_else(|| {
                    Error::malformed("the SendEdxml stream is empty; send the package's bytes")
                })
            });
        let first = shared.or_refuse(&caller, first).await?;
        let message_id = Some(first.message_id.clone()).filter(|m| !m.is_empty());
        upload.clock.add(first.data.len());
        // The decoder reads on a blocking thread; a stall reaches it as the
        // refusal it is, which the pipeline logs.
        let feeder = tokio::spawn(async move {
            let mut chunk = first;
            loop {
                if tx.send(Ok(chunk.data)).await.is_err() {
                    return;
                }
                chunk = match upload.next("the edXML package").await {
                    Ok(Some(c)) => c,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                upload.clock.add(chunk.data.len());
            }
        });
        let result =
            edxml::submit(&shared.gw, &caller, reader, message_id, shared.edxml_policy).await;
        feeder.abort();
        result.map(Response::new).into_status()
    }

    async fn fetch_edxml(
        &self,
        request: Request<pb::FetchEdxmlRequest>,
    ) -> Result<Response<Self::FetchEdxmlStream>, Status> {
        let s = &self.shared;
        let (caller, req) = s.open(request).await?;
        let rx = edxml::render(
            &s.gw,
            &caller,
            &req.from,
            &req.message_id,
            &s.trace_organ_id,
        )
        .await
        .into_status()?;
        let chunks = ReceiverStream::new(rx).map(|item| {
            item.map(|data| pb::EdxmlChunk {
                data,
                message_id: String::new(),
            })
        });
        s.stream_to_caller(&caller, chunks).await
    }

    unary!(self.trace(pb::TraceRequest) -> pb::TraceResponse = |gw, caller, r| {
        let events = gw.trace(Some(caller), &r.from, &r.message_id).await?;
        Ok(pb::TraceResponse { events })
    });

    unary!(self.document_status(pb::DocumentStatusRequest) -> pb::DocumentStatusResponse =
        |gw, caller, r| gw.document_status(caller, &r.from, &r.document_id).await);
}

#[tonic::async_trait]
impl pb::directory_server::Directory for DirectoryService {
    unary!(self.lookup(pb::LookupRequest) -> pb::Agency =
        |gw, _, r| gw.lookup(&r.organ_id).await);

    unary!(self.list(pb::ListRequest) -> pb::ListResponse = |gw, _, r| {
        let (agencies, next_page_token) = gw.list(&r.under, r.page_size, &r.page_token).await?;
        Ok(pb::ListResponse {
            agencies,
            next_page_token,
        })
    });
}

/// Puts the delivery's edXML rendering in `edxml` when it fits in one
/// message; otherwise the client fetches it with FetchEdxml.
async fn render_inline(gw: &Gateway, hop: &str, caller: &Caller, d: &mut pb::Delivery) {
    let Some(env) = d
        .envelope
        .as_ref()
        .and_then(|s| pb::Envelope::decode(s.payload.clone()).ok())
    else {
        return;
    };
    match edxml::render_small(
        gw,
        caller,
        &env.from,
        &env.message_id,
        hop,
        INLINE_EDXML_BYTES,
    )
    .await
    {
        Ok(Some(x)) => d.edxml = x.into(),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(message_id = %env.message_id, error = %e.chain(), "could not render a delivery as edXML");
        }
    }
}

/// A stream-level failure (the client's bytes could not be decoded, the
/// connection broke) as the core's error.
fn transport_error(st: &Status, what: &str) -> Error {
    match st.code() {
        Code::ResourceExhausted | Code::OutOfRange => Error::new(
            Reason::SizeLimit,
            format!(
                "{what} is larger than this gateway accepts in one message; send attachments in chunks of at most {MAX_CHUNK_BYTES} bytes"
            ),
        ),
        Code::Cancelled => Error::malformed(format!(
            "the stream was cancelled during {what}; nothing was accepted, send the message again"
        )),
        Code::Internal | Code::InvalidArgument => Error::malformed(format!(
            "{what} is not a lienthong.v1.SendRequest protobuf: {}",
            st.message()
        )),
        _ => Error::malformed(format!(
            "the stream broke during {what}: {}; nothing was accepted, send the message again",
            st.message()
        )),
    }
}

/// What an upload holds until it is answered: the gateway's admission of
/// the submission and the caller's stream slot.
struct Held {
    _admission: Admission,
    _slot: Option<OwnedSemaphorePermit>,
}

/// An upload stream (`rpc`) read at the pace its clock allows.
struct Upload<T> {
    stream: Streaming<T>,
    clock: limits::UploadClock,
    rpc: &'static str,
}

impl<T> Upload<T> {
    /// The next message (`None` at the end of the stream), or the refusal
    /// when the stream stalls or breaks during `what`.
    async fn next(&mut self, what: &str) -> Result<Option<T>, Error> {
        let (wait, stall) = self.clock.wait();
        match tokio::time::timeout(wait, self.stream.message()).await {
            Err(_) => Err(self.clock.refusal(stall, self.rpc)),
            Ok(Err(st)) => Err(transport_error(&st, what)),
            Ok(Ok(next)) => Ok(next),
        }
    }
}

/// The gRPC server, ready to be served on a listener.
pub struct GrpcServer {
    /// What every service shares, cloned into each when served.
    shared: Shared,
    report_settings: lienthong_reports::ReportSettings,
    max_message: usize,
    connections: tls::ConnectionLimits,
    refused: Option<tls::RefusedConnections>,
}

impl GrpcServer {
    pub fn new(gw: Gateway, auth: AuthMode) -> Self {
        let max_message = gw.limits().max_envelope_bytes.max(MAX_CHUNK_BYTES) + 64 * 1024;
        let gw_id = gw.gateway_id().to_owned();
        let shared = Shared {
            gw,
            auth,
            edxml_policy: Policy::Lenient,
            trace_organ_id: gw_id,
            limiter: Arc::new(limits::AgencyLimiter::new(limits::AgencyLimits::default())),
            peers: Arc::new(limits::PeerLimiter::new(limits::PeerLimits::default())),
            upload: limits::UploadLimits::default(),
            stopping: Arc::new(watch::channel(false).0),
        };
        GrpcServer {
            shared,
            report_settings: Default::default(),
            max_message,
            connections: tls::ConnectionLimits::default(),
            refused: None,
        }
    }

    /// The policy edXML packages are checked with (lenient by default: what
    /// real producers send).
    pub fn with_edxml_policy(mut self, policy: Policy) -> Self {
        self.shared.edxml_policy = policy;
        self
    }

    /// The pace an upload stream (Send, SendEdxml) must keep: its longest
    /// silence, its minimum rate after a grace period, its overall deadline.
    pub fn with_upload_limits(mut self, upload: limits::UploadLimits) -> Self {
        self.shared.upload = upload;
        self
    }

    /// Per-peer call rate, checked before the caller is identified.
    pub fn with_peer_limits(mut self, l: limits::PeerLimits) -> Self {
        self.shared.peers = Arc::new(limits::PeerLimiter::new(l));
        self
    }

    /// Bounds on TLS handshakes and connections, per peer and in all
    /// (mutual TLS only), and where connections closed before any call are
    /// counted (one counter for every listener of the gateway).
    pub fn with_connection_limits(
        mut self,
        l: tls::ConnectionLimits,
        refused: tls::RefusedConnections,
    ) -> Self {
        self.connections = l;
        self.refused = Some(refused);
        self
    }

    /// Per-agency call rate and concurrent-stream limits.
    pub fn with_agency_limits(mut self, l: limits::AgencyLimits) -> Self {
        self.shared.limiter = Arc::new(limits::AgencyLimiter::new(l));
        self
    }

    /// The agency code written in the TraceHeader of rendered edXML
    /// (default: the gateway's id).
    pub fn with_trace_organ_id(mut self, organ_id: &str) -> Self {
        self.shared.trace_organ_id = organ_id.to_owned();
        self
    }

    /// How `Reports.Summary` judges lateness (working hours, N).
    pub fn with_report_settings(mut self, settings: lienthong_reports::ReportSettings) -> Self {
        self.report_settings = settings;
        self
    }

    /// Serves until `shutdown` completes, then drains in-flight calls.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let (health, health_svc) = tonic_health::server::health_reporter();
        let gw = self.shared.gw.clone();
        let connections = self.connections;
        let refused = self
            .refused
            .unwrap_or_else(|| tls::RefusedConnections::register(gw.metrics_registry()));
        let tls = match &self.shared.auth {
            AuthMode::Mtls(tls) => Some(tls.clone()),
            AuthMode::DevHeader => None,
        };
        let stopping = self.shared.stopping.clone();
        tokio::spawn(readiness(gw, health, stopping.subscribe()));
        // Not ready first, then the following streams end, then tonic stops
        // taking calls and waits for those in flight.
        let shutdown = async move {
            shutdown.await;
            stopping.send_replace(true);
        };
        let reports = reports::ReportsService::new(self.shared.clone(), self.report_settings);
        let exchange = ExchangeService {
            shared: self.shared.clone(),
        };
        let directory = DirectoryService {
            shared: self.shared.clone(),
        };
        let admin = AdminService {
            shared: self.shared,
        };
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1();
        // HTTP/2's default flow-control windows (64 KiB) hold an upload to
        // one window per round trip: a 1 GiB attachment crawled at about
        // 50 MB/s. Larger windows let it stream; what a connection can make
        // the gateway buffer stays bounded by the connection window.
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW));
        let mut router = builder
            .add_service(
                ExchangeServer::new(exchange)
                    .max_decoding_message_size(self.max_message)
                    .max_encoding_message_size(self.max_message),
            )
            .add_service(DirectoryServer::new(directory))
            .add_service(AdminServer::new(admin))
            .add_service(ReportsServer::new(reports))
            .add_service(health_svc);
        match reflection {
            Ok(r) => router = router.add_service(r),
            Err(e) => tracing::warn!(error = %e, "gRPC reflection is not available"),
        }
        match tls {
            Some(tls) => {
                tls.spawn_watcher(Duration::from_secs(5));
                router
                    .serve_with_incoming_shutdown(
                        tls.incoming(listener, connections, refused),
                        shutdown,
                    )
                    .await
            }
            None => {
                // As on the TLS path: a small answer must not wait for the
                // peer's delayed ACK (Nagle's algorithm held every reply
                // about 40 ms).
                router
                    .serve_with_incoming_shutdown(
                        TcpIncoming::from(listener).with_nodelay(Some(true)),
                        shutdown,
                    )
                    .await
            }
        }
    }
}

/// Reports SERVING while the database answers, NOT_SERVING when it does not
/// and from the moment the gateway starts to stop.
async fn readiness(
    gw: Gateway,
    health: tonic_health::server::HealthReporter,
    mut stopping: watch::Receiver<bool>,
) {
    let mut last: Option<bool> = None;
    loop {
        let stop = *stopping.borrow();
        let ok = !stop && gw.ready().await.is_ok();
        if last != Some(ok) {
            let status = if ok {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            for name in [
                <ExchangeServer<ExchangeService> as NamedService>::NAME,
                <DirectoryServer<DirectoryService> as NamedService>::NAME,
                <AdminServer<AdminService> as NamedService>::NAME,
                <ReportsServer<reports::ReportsService> as NamedService>::NAME,
            ] {
                health.set_service_status(name, status).await;
            }
            if stop {
                tracing::info!("stopping: reporting NOT_SERVING");
            } else if !ok {
                tracing::error!("the database does not answer: reporting NOT_SERVING");
            }
            last = Some(ok);
        }
        if stop {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stopping.changed() => {}
        }
    }
}
