//! edXML at the gateway's edge: a package coming in goes through the one
//! pipeline like any signed envelope, and a stored message goes out as a
//! package with this gateway's hop in its TraceHeaderList.
//!
//! The codec is synchronous (quick-xml over `Read`/`Write`); these functions
//! run it on a blocking thread and bridge the bytes to and from async code
//! through bounded channels, so memory stays at a few chunks whatever the
//! size of the package.

use std::io::{self, Read, Write};

use lienthong_core::blobs::{SealedBlob, TempWriter};
use lienthong_core::error::{Error, Reason, Result};
use lienthong_core::organ_id::IdPolicy;
use lienthong_core::pipeline::{AttachmentReader, Caller, Gateway};
use lienthong_edxml::{
    AttachmentMeta, AttachmentSink, DecodeOptions, EncodeOptions, FnSource, Limits, Package,
    Policy, ReadSeek, check, decode, encode, not_begun, trace_header,
};
use lienthong_proto::v1::{Envelope, SendReceipt, envelope::Body};
use prost::Message as _;
use prost::bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

const CHUNK: usize = 256 * 1024;

/// A `Read` over chunks sent from async code. `Err` items end the stream
/// with that error (the transport broke).
#[derive(Debug)]
pub struct ChunkReader {
    rx: mpsc::Receiver<Result<Bytes>>,
    current: Bytes,
}

/// A bounded channel: the async side sends chunks, a blocking thread reads.
/// A transport's refusal sent down it (a stalled or broken stream) ends the
/// decoding with that refusal, as it is.
pub fn chunk_channel(capacity: usize) -> (mpsc::Sender<Result<Bytes>>, ChunkReader) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        tx,
        ChunkReader {
            rx,
            current: Bytes::new(),
        },
    )
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Decodes a package from `reader` (attachments to temporary files of the
/// attachment store, sealed when it encrypts), checks it under `policy`,
/// and submits it through the pipeline on the caller's identity. Every
/// refusal is logged by the pipeline.
pub async fn submit<R: Read + Send + 'static>(
    gw: &Gateway,
    caller: &Caller,
    reader: R,
    message_id: Option<String>,
    policy: Policy,
) -> Result<SendReceipt> {
    let limits = gw.limits();
    let opts = DecodeOptions {
        message_id: message_id.clone(),
        limits: Limits {
            max_attachment_bytes: limits.max_attachment_bytes,
            max_attachments: limits.max_attachments,
            ..Default::default()
        },
        ..Default::default()
    };
    let sink_gw = gw.clone();
    let decoded = tokio::task::spawn_blocking(move || {
        let mut sink = TempSink::new(sink_gw);
        let pkg = decode(reader, &mut sink, &opts)?;
        Ok::<_, Error>((pkg, sink.files))
    })
    .await
    .map_err(|e| Error::unavailable("the edXML decoder", e))?;
    let id = message_id.unwrap_or_default();
    let (pkg, files) = match decoded {
        Ok(x) => x,
        Err(e) => return Err(gw.refuse(Some(caller), &id, e).await),
    };
    if let Err(e) = check(&pkg, policy) {
        return Err(gw.refuse(Some(caller), &pkg.envelope.message_id, e).await);
    }
    let id_policy = match policy {
        Policy::Strict => IdPolicy::Strict,
        Policy::Lenient => IdPolicy::Lenient,
    };
    let mut sub = gw
        .begin_send_unsigned(caller, &pkg.envelope, id_policy, signature_notes(&pkg))
        .await?;
    // The temporary files are read back on a blocking thread, a few chunks
    // ahead of the submission.
    let (tx, mut rx) = mpsc::channel::<Result<(u32, Vec<u8>)>>(4);
    let reader_gw = gw.clone();
    let feeder = tokio::task::spawn_blocking(move || {
        let send = |item| tx.blocking_send(item).is_ok();
        for (i, file) in files.iter().enumerate() {
            let mut r = match reader_gw.temp_reader(file) {
                Ok(r) => r,
                Err(e) => {
                    send(Err(e));
                    return;
                }
            };
            loop {
                let mut buf = vec![0u8; CHUNK];
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if !send(Ok((i as u32, buf))) {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        send(Err(Error::unavailable("temporary storage", e)));
                        return;
                    }
                }
            }
        }
        // `files` (the temporary files) are removed here, once read.
    });
    while let Some(item) = rx.recv().await {
        match item {
            Ok((i, chunk)) => sub.write_chunk(i, &chunk).await?,
            Err(e) => return Err(sub.abort(e).await),
        }
    }
    if let Err(e) = feeder.await {
        return Err(sub.abort(Error::unavailable("temporary storage", e)).await);
    }
    sub.finish().await
}

/// Decoded attachments in temporary files of the attachment store: sealed
/// like blobs when the store encrypts, so a package's content never lies
/// in plaintext on disk, and removed at the next start after a crash.
struct TempSink {
    gw: Gateway,
    files: Vec<SealedBlob>,
    current: Option<TempWriter>,
}

impl TempSink {
    fn new(gw: Gateway) -> TempSink {
        TempSink {
            gw,
            files: Vec::new(),
            current: None,
        }
    }
}

impl AttachmentSink for TempSink {
    fn begin(&mut self, _index: usize, _meta: &AttachmentMeta) -> Result<()> {
        self.current = Some(self.gw.temp_file()?);
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let w = self.current.as_mut().ok_or_else(not_begun)?;
        w.write_all(bytes)
            .map_err(|e| Error::unavailable("temporary storage", e))
    }

    fn end(&mut self) -> Result<(u64, [u8; 32])> {
        let w = self.current.take().ok_or_else(not_begun)?;
        let file = w.finish()?;
        let done = (file.size, file.sha256);
        self.files.push(file);
        Ok(done)
    }

    fn read_back(&mut self, index: usize) -> Result<Option<Box<dyn ReadSeek + '_>>> {
        let Some(file) = self.files.get(index) else {
            return Ok(None);
        };
        let r = self.gw.temp_reader(file)?;
        Ok(Some(Box::new(io::BufReader::with_capacity(64 * 1024, r))))
    }
}

/// What the package's own XML signature showed: reported, not trusted.
fn signature_notes(pkg: &Package) -> Vec<String> {
    let Some(sig) = &pkg.signature else {
        return vec!["the package has no Signature element".to_owned()];
    };
    let mut notes: Vec<String> = sig
        .certificates
        .iter()
        .map(|c| {
            format!(
                "its XML signature names the certificate {} issued by {}, valid {} to {} (not verified)",
                c.subject, c.issuer, c.not_before, c.not_after
            )
        })
        .collect();
    if notes.is_empty() {
        notes.push("its Signature element carries no certificate".to_owned());
    }
    notes
}

/// A `Write` that hands full chunks to async code.
struct ChunkWriter {
    tx: mpsc::Sender<std::result::Result<Bytes, Error>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the receiver went away"))
    }
}

/// A stored attachment as a blocking `Read`, digest-checked at its end.
struct BlobRead {
    handle: Handle,
    reader: AttachmentReader,
    current: Vec<u8>,
    pos: usize,
}

impl Read for BlobRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.current.len() {
            match self.handle.block_on(self.reader.next_chunk(64 * 1024)) {
                Ok(Some(c)) => {
                    self.current = c;
                    self.pos = 0;
                }
                Ok(None) => return Ok(0),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Renders a message the caller sent or received as an edXML package, with
/// a TraceHeader for this gateway's hop (`hop`: the agency code the gateway
/// writes there) appended, in chunks on the returned channel.
pub async fn render(
    gw: &Gateway,
    caller: &Caller,
    from: &str,
    message_id: &str,
    hop: &str,
) -> Result<mpsc::Receiver<std::result::Result<Bytes, Error>>> {
    let signed = gw.envelope_of(caller, from, message_id).await?;
    let env = Envelope::decode(signed.payload.clone()).map_err(|e| {
        Error::new(Reason::Unavailable, "a stored envelope could not be read").with_source(e)
    })?;
    let (tx, rx) = mpsc::channel(4);
    let handle = Handle::current();
    let gw = gw.clone();
    let caller = caller.clone();
    let from = from.to_owned();
    let message_id = message_id.to_owned();
    let hop = hop.to_owned();
    tokio::task::spawn_blocking(move || {
        let hop = trace_header(&hop, time::OffsetDateTime::now_utc());
        let opts = EncodeOptions { trace: Some(hop) };
        let mut src = FnSource::new(|i: usize, _a: &lienthong_proto::v1::AttachmentRef| {
            let reader =
                handle.block_on(gw.fetch_attachment(&caller, &from, &message_id, i as u32))?;
            Ok(Box::new(BlobRead {
                handle: handle.clone(),
                reader,
                current: Vec::new(),
                pos: 0,
            }) as Box<dyn Read>)
        });
        let mut out = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let result = encode(&env, &mut src, &mut out, &opts).and_then(|()| {
            out.flush().map_err(|e| {
                Error::new(Reason::Unavailable, "the edXML stream broke").with_source(e)
            })
        });
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    Ok(rx)
}

/// Renders a small message whole; `None` when it is larger than `max`
/// bytes (the caller should stream it with [`render`]).
pub async fn render_small(
    gw: &Gateway,
    caller: &Caller,
    from: &str,
    message_id: &str,
    hop: &str,
    max: usize,
) -> Result<Option<Vec<u8>>> {
    let signed = gw.envelope_of(caller, from, message_id).await?;
    if let Ok(env) = Envelope::decode(signed.payload.clone()) {
        // Base64 makes attachments a third larger: skip the render when the
        // attachments alone cannot fit.
        if let Some(Body::Document(d)) = &env.body {
            let raw: u64 = d.attachments.iter().map(|a| a.size).sum();
            if raw.saturating_mul(4) / 3 > max as u64 {
                return Ok(None);
            }
        }
    }
    let mut rx = render(gw, caller, from, message_id, hop).await?;
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        out.extend_from_slice(&chunk?);
        if out.len() > max {
            return Ok(None);
        }
    }
    Ok(Some(out))
}
