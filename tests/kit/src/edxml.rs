//! edXML packages written by the tests themselves (QCVN 102:2016, the
//! fields the gateway needs and a few more), and sending them as agency
//! software that speaks edXML does (`Exchange.SendEdxml`).

use futures::StreamExt;
use prost::bytes::Bytes;
use tonic::Status;

use crate::v1::{EdxmlChunk, SendReceipt};
use crate::{Agency, CHUNK};

/// What a document package says about its business (QCVN 102 `Bussiness`).
#[derive(Clone, Copy, Debug)]
pub enum Business<'a> {
    New,
    /// A recall of the sender's document with this DocumentId.
    Recall(&'a str),
    Update(&'a str),
    Replace(&'a str),
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn organization(tag: &str, id: &str) -> String {
    format!(
        "<{tag}><OrganId>{id}</OrganId><OrganizationInCharge>UBND tỉnh Lai Châu</OrganizationInCharge>\
         <OrganName>Cơ quan {id}</OrganName><OrganAdd>Thành phố Lai Châu</OrganAdd>\
         <Email>vanthu@laichau.gov.vn</Email><Telephone></Telephone><Fax></Fax><Website></Website></{tag}>"
    )
}

/// The package's opening up to (not including) `AttachmentEncoded`.
fn document_head(
    from: &str,
    to: &[&str],
    document_id: &str,
    subject: &str,
    business: Business<'_>,
    attachments: &[(&str, u64)],
) -> String {
    let (kind, target) = match business {
        Business::New => (0, ""),
        Business::Recall(t) => (1, t),
        Business::Update(t) => (2, t),
        Business::Replace(t) => (3, t),
    };
    let tos: String = to.iter().map(|t| organization("To", t)).collect();
    let refs: String = attachments
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            format!(
                "<Reference><ContentId>cid:{n}</ContentId><ContentType>text/plain</ContentType>\
                 <Description>Tệp {n}</Description><AttachmentName>{name}</AttachmentName></Reference>",
                n = i + 1,
                name = escape(name)
            )
        })
        .collect();
    let replacement = if kind == 3 {
        format!(
            "<ReplacementInfoList><ReplacementInfo><DocumentId>{target}</DocumentId>\
             <OrganIdList><OrganId>{}</OrganId></OrganIdList></ReplacementInfo></ReplacementInfoList>",
            to.first().copied().unwrap_or_default()
        )
    } else {
        "<ReplacementInfoList></ReplacementInfoList>".to_owned()
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016"><edXMLEnvelope><edXMLHeader><MessageHeader>
{from_org}{tos}<DocumentId>{document_id}</DocumentId>
<Code><CodeNumber>16</CodeNumber><CodeNotation>UBND-VP</CodeNotation></Code>
<PromulgationInfo><Place>Lai Châu</Place><PromulgationDate>{today}</PromulgationDate></PromulgationInfo>
<DocumentType><Type>1</Type><TypeDetail>0</TypeDetail><TypeName>Công văn</TypeName></DocumentType>
<Subject>{subject}</Subject><Content>Văn bản thử nghiệm edXML.</Content>
<SignerInfo><Competence>TL. CHỦ TỊCH</Competence><Position>Chánh Văn phòng</Position><FullName>Vàng A Dếnh</FullName></SignerInfo>
<OtherInfo><Priority>0</Priority><SphereOfPromulgation>Liên thông văn bản</SphereOfPromulgation><TyperNotation>HT</TyperNotation>
<PromulgationAmount>1</PromulgationAmount><PageAmount>1</PageAmount><Direction>false</Direction></OtherInfo>
<SteeringType>1</SteeringType><ToPlaces><Place>Như trên</Place></ToPlaces>
</MessageHeader><TraceHeaderList><TraceHeader><OrganId>{from}</OrganId><Timestamp>{now}</Timestamp></TraceHeader>
<Bussiness><DocumentId>{target}</DocumentId><BussinessDocType>{kind}</BussinessDocType><BussinessDocReason>Thử nghiệm</BussinessDocReason>
<Paper>0</Paper>{replacement}<StaffInfo><Department>Văn thư</Department><Staff>Lò Thị Hoa</Staff>
<Email>vanthu@laichau.gov.vn</Email><Mobile>0912000111</Mobile></StaffInfo></Bussiness></TraceHeaderList></edXMLHeader>
<edXMLBody><edXMLManifest version="1.0">{refs}</edXMLManifest></edXMLBody></edXMLEnvelope>"#,
        from_org = organization("From", from),
        subject = escape(subject),
        today = today(),
        now = now(),
    )
}

fn today() -> String {
    let d = time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(+7));
    format!("{:04}/{:02}/{:02}", d.year(), u8::from(d.month()), d.day())
}

fn now() -> String {
    let d = time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(+7));
    format!(
        "{} {:02}:{:02}:{:02}",
        today(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

/// A document package with small text attachments, whole.
pub fn document(
    from: &str,
    to: &[&str],
    document_id: &str,
    subject: &str,
    business: Business<'_>,
    attachments: &[(&str, &[u8])],
) -> Vec<u8> {
    use base64::Engine as _;
    let sizes: Vec<(&str, u64)> = attachments
        .iter()
        .map(|(n, b)| (*n, b.len() as u64))
        .collect();
    let mut out = document_head(from, to, document_id, subject, business, &sizes);
    out.push_str("<AttachmentEncoded>");
    for (i, (name, bytes)) in attachments.iter().enumerate() {
        out.push_str(&attachment_open(i, name));
        out.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
        out.push_str(ATTACHMENT_CLOSE);
    }
    out.push_str("</AttachmentEncoded></edXML>");
    out.into_bytes()
}

fn attachment_open(i: usize, name: &str) -> String {
    format!(
        "<Attachment><ContentId>cid:{n}</ContentId><AttachmentName>{name}</AttachmentName>\
         <Description>Tệp {n}</Description><ContentType>text/plain</ContentType><ContentTransferEncoded>",
        n = i + 1,
        name = escape(name)
    )
}

const ATTACHMENT_CLOSE: &str = "</ContentTransferEncoded></Attachment>";

/// A document package with one attachment of `size` bytes of `pattern`
/// repeated, produced in chunks of about [`CHUNK`] bytes (the package is
/// never whole in memory).
pub fn large_document(
    from: &str,
    to: &[&str],
    document_id: &str,
    name: &str,
    pattern: &'static [u8],
    size: u64,
) -> impl Iterator<Item = Bytes> + Send + 'static {
    use base64::Engine as _;
    let head = document_head(
        from,
        to,
        document_id,
        "Văn bản kèm tệp lớn",
        Business::New,
        &[(name, size)],
    ) + "<AttachmentEncoded>"
        + &attachment_open(0, name);
    // Whole multiples of 3 bytes per chunk: the base64 of each chunk
    // joins the next without padding.
    let per_chunk = (CHUNK / 4 * 3) as u64;
    let mut sent = 0u64;
    let body = std::iter::from_fn(move || {
        if sent >= size {
            return None;
        }
        let n = per_chunk.min(size - sent);
        let raw: Vec<u8> = (sent..sent + n)
            .map(|i| pattern[(i % pattern.len() as u64) as usize])
            .collect();
        sent += n;
        Some(Bytes::from(
            base64::engine::general_purpose::STANDARD.encode(raw),
        ))
    });
    std::iter::once(Bytes::from(head))
        .chain(body)
        .chain(std::iter::once(Bytes::from(format!(
            "{ATTACHMENT_CLOSE}</AttachmentEncoded></edXML>"
        ))))
}

/// A status package from `from` about `document_from`'s document.
pub fn status(from: &str, document_from: &str, document_id: &str, code: &str) -> Vec<u8> {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016"><edXMLEnvelope><edXMLHeader><MessageHeader>
{from_org}<ResponseFor><OrganId>{document_from}</OrganId><Code>16/UBND-VP</Code>
<PromulgationDate>{today}</PromulgationDate><DocumentId>{document_id}</DocumentId></ResponseFor>
<StaffInfo><Department>Văn thư</Department><Staff>Giàng Thị Mai</Staff><Email>vanthu@laichau.gov.vn</Email>
<Mobile>0912000222</Mobile></StaffInfo><StatusCode>{code}</StatusCode><Description>Trạng thái {code}</Description>
<Timestamp>{now}</Timestamp></MessageHeader></edXMLHeader></edXMLEnvelope></edXML>"#,
        from_org = organization("From", from),
        today = today(),
        now = now(),
    )
    .into_bytes()
}

/// Sends a package with `Exchange.SendEdxml` as `agency` (its caller
/// identity), with this message_id.
pub async fn send(
    agency: &Agency,
    message_id: &str,
    package: Vec<u8>,
) -> Result<SendReceipt, Status> {
    send_chunks(
        agency,
        message_id,
        package
            .chunks(CHUNK)
            .map(|c| Bytes::from(c.to_vec()))
            .collect::<Vec<_>>()
            .into_iter(),
    )
    .await
}

/// Sends a package given in chunks.
pub async fn send_chunks(
    agency: &Agency,
    message_id: &str,
    chunks: impl Iterator<Item = Bytes> + Send + 'static,
) -> Result<SendReceipt, Status> {
    send_stream(agency, message_id, futures::stream::iter(chunks)).await
}

/// Sends a package from any stream of chunks (e.g. one a test holds back).
pub async fn send_stream(
    agency: &Agency,
    message_id: &str,
    chunks: impl futures::Stream<Item = Bytes> + Send + 'static,
) -> Result<SendReceipt, Status> {
    let id = message_id.to_owned();
    let mut first = true;
    let stream = chunks.map(move |data| EdxmlChunk {
        data,
        message_id: if std::mem::take(&mut first) {
            id.clone()
        } else {
            String::new()
        },
    });
    agency
        .exchange()
        .send_edxml(agency.request(stream))
        .await
        .map(|r| r.into_inner())
}
