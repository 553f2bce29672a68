#!/usr/bin/env python3
"""Generate PAdES test fixtures signed by pyHanko, an independent signer.

Usage:
    python generate_pyhanko.py OUTPUT_DIR

pyHanko is used only here, at fixture-generation time; lienthong never runs it.
The outputs (PDFs, root.pem, root.crl, expected.json) are committed, so fresh
keys on every run are fine. Everything else is pinned: certificate validity,
signing times (/M), the timestamp's genTime, /Info and XMP dates, and the
trailer /IDs (the first ID is a constant; each update's second ID is a hash of
the bytes before it). What still varies between runs: keys, serial numbers,
ECDSA signatures (so also the ECDSA files' size), and the timestamp nonce.

After writing the files the script re-reads them, derives revision boundaries
and ByteRange coverage from the bytes, validates every signature with pyHanko's
own validator (trusting only root.pem, no network) and writes expected.json.
It exits non-zero if pyHanko's results differ from those the script expects.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import sys
from datetime import datetime, timezone
from importlib.metadata import version as dist_version
from pathlib import Path

from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.metadata import info as meta_info
from pyhanko.pdf_utils.metadata import xmp_xml as meta_xmp
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import PageObject, PdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.sign.timestamps.dummy_client import DummyTimeStamper
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.registry import SimpleCertificateStore


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


ROOT_NOT_BEFORE = utc(2020, 1, 1)
ROOT_NOT_AFTER = utc(2050, 1, 1)
LEAF_NOT_BEFORE = utc(2024, 1, 1)
LEAF_NOT_AFTER = utc(2045, 1, 1)
CRL_THIS_UPDATE = utc(2026, 3, 1)
CRL_NEXT_UPDATE = utc(2045, 1, 1)
CRL_URL = "http://pki.lienthong.test/root.crl"

BASE_TIME = utc(2026, 3, 1, 0, 0, 0)
RSA_SIGNING_TIME = utc(2026, 3, 2, 1, 0, 0)
ECDSA_SIGNING_TIME = utc(2026, 3, 2, 2, 0, 0)
TST_TIME = utc(2026, 3, 2, 1, 5, 0)
AFTER_TIME = utc(2026, 3, 3, 0, 0, 0)

ORG = "Sở Nội vụ tỉnh Lai Châu"


# ---------------------------------------------------------------- PKI

def name(cn: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def build_pki():
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root_name = name("Lienthong pyHanko Test Root", "Lienthong Test PKI")
    root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ROOT_NOT_BEFORE)
        .not_valid_after(ROOT_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(root_ski, critical=False)
        .sign(root_key, hashes.SHA256())
    )
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski)

    def leaf(subject: x509.Name, key, *, tsa: bool = False) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(root_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(LEAF_NOT_BEFORE)
            .not_valid_after(LEAF_NOT_AFTER)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=not tsa,
                    key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(aki, critical=False)
            .add_extension(
                x509.CRLDistributionPoints(
                    [x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(CRL_URL)],
                        relative_name=None, reasons=None, crl_issuer=None,
                    )]
                ),
                critical=False,
            )
        )
        if tsa:
            b = b.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True
            )
        return b.sign(root_key, hashes.SHA256())

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_cert = leaf(name("Nguyễn Văn An", ORG), rsa_key)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_cert = leaf(name(ORG, ORG), ec_key)
    # pyHanko's DummyTimeStamper is RSA-only.
    tsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tsa_cert = leaf(name("Lienthong pyHanko Test TSA", "Lienthong Test PKI"), tsa_key, tsa=True)

    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root_name)
        .last_update(CRL_THIS_UPDATE)
        .next_update(CRL_NEXT_UPDATE)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(aki, critical=False)
        .sign(root_key, hashes.SHA256())
    )
    return {
        "root": root,
        "crl": crl,
        "rsa": (rsa_cert, rsa_key),
        "ec": (ec_cert, ec_key),
        "tsa": (tsa_cert, tsa_key),
    }


def to_asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def to_asn1_key(key) -> asn1_keys.PrivateKeyInfo:
    return asn1_keys.PrivateKeyInfo.load(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


# ---------------------------------------------------------------- determinism helpers

class _FixedMeta:
    """Mixin: pin the modification date that pyHanko writes into /Info
    (/ModDate) and, for PDF 2.0 output, into XMP (xmp:ModifyDate) on every
    save. pyHanko hard-codes 'now' there, so the clock is stubbed for the
    duration of the metadata update only."""

    mod_date: datetime = BASE_TIME

    def _update_meta(self):
        fixed = self.mod_date

        class _FixedClock(datetime):
            @classmethod
            def now(cls, tz=None):
                return fixed if tz is None else fixed.astimezone(tz)

        saved = (meta_info.datetime, meta_xmp.datetime)
        meta_info.datetime = meta_xmp.datetime = _FixedClock
        try:
            super()._update_meta()
        finally:
            meta_info.datetime, meta_xmp.datetime = saved


class FixedPdfFileWriter(_FixedMeta, PdfFileWriter):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        digest = hashlib.sha256(b"lienthong pyhanko base").digest()
        self._document_id = generic.ArrayObject(
            [generic.ByteStringObject(digest[:16]), generic.ByteStringObject(digest[16:])]
        )


class FixedIncrementalWriter(_FixedMeta, IncrementalPdfFileWriter):
    def __init__(self, data: bytes, mod_date: datetime):
        self.mod_date = mod_date
        super().__init__(io.BytesIO(data), strict=True)

    @classmethod
    def _handle_id(cls, prev):
        # keep the permanent ID, derive the changing one from the prior bytes
        ids = super()._handle_id(prev)
        prev.stream.seek(0)
        digest = hashlib.sha256(prev.stream.read()).digest()
        return generic.ArrayObject([ids[0], generic.ByteStringObject(digest[:16])])


class FixedTimePdfSigner(signers.PdfSigner):
    """pyHanko takes the signing time (/M) from the clock; pin it."""

    def __init__(self, *args, signing_time: datetime, **kwargs):
        super().__init__(*args, **kwargs)
        self.signing_time = signing_time

    def init_signing_session(self, pdf_out, existing_fields_only=False):
        session = super().init_signing_session(pdf_out, existing_fields_only)
        session.system_time = self.signing_time
        return session


# ---------------------------------------------------------------- PDF building

def content_stream(lines: list[str]) -> bytes:
    ops = ["BT", "/F1 14 Tf", "18 TL", "72 760 Td"]
    for line in lines:
        esc = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops.append(f"({esc}) Tj T*")
    ops.append("ET")
    return ("\n".join(ops) + "\n").encode("latin-1")


BASE_TEXT = [
    "SO NOI VU TINH LAI CHAU",
    "So: 01/QD-SNV",
    "QUYET DINH ve viec thu nghiem lien thong van ban",
    "Lienthong pyHanko test document (base revision).",
]
CHANGED_TEXT = [
    "SO NOI VU TINH LAI CHAU",
    "So: 99/QD-SNV",
    "QUYET DINH nay da bi sua doi sau khi ky",
    "Lienthong pyHanko test document (CHANGED after signing).",
]


def base_pdf() -> bytes:
    w = FixedPdfFileWriter(stream_xrefs=False)
    w.mod_date = BASE_TIME
    font = generic.DictionaryObject(
        {
            pdf_name("/Type"): pdf_name("/Font"),
            pdf_name("/Subtype"): pdf_name("/Type1"),
            pdf_name("/BaseFont"): pdf_name("/Helvetica"),
            pdf_name("/Encoding"): pdf_name("/WinAnsiEncoding"),
        }
    )
    resources = generic.DictionaryObject(
        {pdf_name("/Font"): generic.DictionaryObject({pdf_name("/F1"): w.add_object(font)})}
    )
    contents = w.add_object(generic.StreamObject(stream_data=content_stream(BASE_TEXT)))
    w.insert_page(PageObject(contents, (0, 0, 595, 842), resources))
    info = w._info.get_object() if w._info is not None else None
    if info is None:
        w.set_info(generic.DictionaryObject())
        info = w._info.get_object()
    info[pdf_name("/Title")] = generic.TextStringObject("Lienthong pyHanko test document")
    info[pdf_name("/CreationDate")] = generic.pdf_date(BASE_TIME)
    out = io.BytesIO()
    w.write(out)
    return out.getvalue()


def sign(data: bytes, *, cert, key, root, field: str, when: datetime,
         timestamper=None) -> bytes:
    signer = signers.SimpleSigner(
        signing_cert=to_asn1_cert(cert),
        signing_key=to_asn1_key(key),
        cert_registry=SimpleCertificateStore.from_certs([to_asn1_cert(root)]),
    )
    meta = signers.PdfSignatureMetadata(
        field_name=field,
        md_algorithm="sha256",
        subfilter=fields.SigSeedSubFilter.PADES,
    )
    pdf_signer = FixedTimePdfSigner(
        meta,
        signer,
        timestamper=timestamper,
        new_field_spec=fields.SigFieldSpec(sig_field_name=field),
        signing_time=when,
    )
    w = FixedIncrementalWriter(data, when)
    out = pdf_signer.sign_pdf(w)
    return out.getvalue()


def replace_content(data: bytes) -> bytes:
    w = FixedIncrementalWriter(data, AFTER_TIME)
    page_ref, _ = w.find_page_for_modification(0)
    page = page_ref.get_object()
    new = w.add_object(generic.StreamObject(stream_data=content_stream(CHANGED_TEXT)))
    page[pdf_name("/Contents")] = new
    w.mark_update(page_ref)
    out = io.BytesIO()
    w.write(out)
    return out.getvalue()


def add_text_annotation(data: bytes) -> bytes:
    w = FixedIncrementalWriter(data, AFTER_TIME)
    page_ref, _ = w.find_page_for_modification(0)
    page = page_ref.get_object()
    annot = generic.DictionaryObject(
        {
            pdf_name("/Type"): pdf_name("/Annot"),
            pdf_name("/Subtype"): pdf_name("/Text"),
            pdf_name("/Rect"): generic.ArrayObject(
                [generic.NumberObject(v) for v in (500, 760, 520, 780)]
            ),
            pdf_name("/Contents"): generic.TextStringObject("Đã xem - reviewed after signing"),
            pdf_name("/T"): generic.TextStringObject("Văn thư"),
            pdf_name("/M"): generic.pdf_date(AFTER_TIME),
            pdf_name("/F"): generic.NumberObject(4),
            pdf_name("/P"): page_ref,
            pdf_name("/Name"): pdf_name("/Comment"),
        }
    )
    annot_ref = w.add_object(annot)
    annots = page.get("/Annots")
    if annots is None:
        page[pdf_name("/Annots")] = generic.ArrayObject([annot_ref])
    else:
        annots.get_object().append(annot_ref)
    w.mark_update(page_ref)
    out = io.BytesIO()
    w.write(out)
    return out.getvalue()


# ---------------------------------------------------------------- analysis

def revision_ends(data: bytes) -> list[int]:
    """End offset (exclusive, after the EOL) of every revision: one per %%EOF."""
    ends = []
    for m in re.finditer(rb"%%EOF", data):
        end = m.end()
        if data[end:end + 2] == b"\r\n":
            end += 2
        elif data[end:end + 1] in (b"\r", b"\n"):
            end += 1
        ends.append(end)
    return ends


def classify_changes(kinds: set[str]) -> str:
    for level in ("content", "annotations", "signatures"):
        if level in kinds:
            return level
    return "none"


def algorithm_name(cert: x509.Certificate) -> str:
    pk = cert.public_key()
    if isinstance(pk, rsa.RSAPublicKey):
        return "RSA-SHA256"
    if isinstance(pk, ec.EllipticCurvePublicKey) and isinstance(pk.curve, ec.SECP256R1):
        return "ECDSA-P256-SHA256"
    raise ValueError("unexpected key type")


def attr(n: x509.Name, oid) -> str:
    return n.get_attributes_for_oid(oid)[0].value


def analyse(path: Path, root_pem: bytes, crl_der: bytes, what_after: dict[int, str]):
    """what_after maps a 1-based revision index to the kind of change it makes
    ("signatures" | "annotations" | "content") for revisions not created by a
    signature. Signature revisions are detected from the bytes."""
    data = path.read_bytes()
    ends = revision_ends(data)
    reader = PdfFileReader(io.BytesIO(data), strict=True)
    sigs = list(reader.embedded_signatures)
    root = asn1_x509.Certificate.load(x509.load_pem_x509_certificate(root_pem).public_bytes(serialization.Encoding.DER))
    crl = x509.load_der_x509_crl(crl_der).public_bytes(serialization.Encoding.DER)

    sig_revs = {}
    out = []
    for s in sigs:
        br = list(s.sig_object["/ByteRange"])
        br_end = br[2] + br[3]
        assert br[0] == 0, br
        assert br_end in ends, (path.name, br_end, ends)
        sig_revs[s] = ends.index(br_end) + 1
    rev_kind = dict(what_after)
    for s, r in sig_revs.items():
        rev_kind.setdefault(r, "signatures")

    for s in sigs:
        cov = sig_revs[s]
        later = {rev_kind[r] for r in range(cov + 1, len(ends) + 1)}
        cert = x509.load_der_x509_certificate(s.signer_cert.dump())
        vc = ValidationContext(
            trust_roots=[root], crls=[crl], allow_fetching=False,
            revocation_mode="require",
        )
        st = validate_pdf_signature(s, vc)
        ts = st.timestamp_validity
        entry = {
            "field": s.field_name,
            "signer_cn": attr(cert.subject, NameOID.COMMON_NAME),
            "signer_o": attr(cert.subject, NameOID.ORGANIZATION_NAME),
            "algorithm": algorithm_name(cert),
            "subfilter": str(s.sig_object["/SubFilter"]),
            "signing_time": s.self_reported_timestamp.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
            if s.self_reported_timestamp else None,
            "timestamped": ts is not None,
            "timestamp_time": ts.timestamp.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
            if ts is not None else None,
            "byte_range": br_list(s),
            "covers_revision": cov,
            "changes_after": classify_changes(later),
            "pyhanko": {
                "intact": st.intact,
                "valid": st.valid,
                "trusted": st.trusted,
                "coverage": st.coverage.name if st.coverage is not None else None,
                "modification_level": st.modification_level.name
                if st.modification_level is not None else None,
                "docmdp_ok": st.docmdp_ok,
                "diff_error": diff_error(st),
                "bottom_line": st.bottom_line,
                "timestamp": None if ts is None else {
                    "intact": ts.intact, "valid": ts.valid, "trusted": ts.trusted,
                },
            },
        }
        out.append(entry)
    return {"revisions": len(ends), "revision_ends": ends, "signatures": out}


def diff_error(st) -> str | None:
    dr = st.diff_result
    if dr is None or hasattr(dr, "modification_level"):
        return None
    return str(dr).splitlines()[0]


def br_list(s) -> list[int]:
    return [int(v) for v in s.sig_object["/ByteRange"]]


# ---------------------------------------------------------------- main

def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    outdir = Path(sys.argv[1])
    outdir.mkdir(parents=True, exist_ok=True)

    # pyHanko logs a traceback for every SuspiciousModification; the message
    # is recorded in expected.json instead.
    logging.getLogger("pyhanko.sign.diff_analysis").setLevel(logging.CRITICAL)

    pki = build_pki()
    root = pki["root"]
    root_pem = root.public_bytes(serialization.Encoding.PEM)
    crl_der = pki["crl"].public_bytes(serialization.Encoding.DER)
    (outdir / "root.pem").write_bytes(root_pem)
    (outdir / "root.crl").write_bytes(crl_der)

    rsa_cert, rsa_key = pki["rsa"]
    ec_cert, ec_key = pki["ec"]
    tsa_cert, tsa_key = pki["tsa"]

    base = base_pdf()
    rsa_signed = sign(base, cert=rsa_cert, key=rsa_key, root=root,
                      field="Signature1", when=RSA_SIGNING_TIME)
    ecdsa_signed = sign(base, cert=ec_cert, key=ec_key, root=root,
                        field="OrgSeal", when=ECDSA_SIGNING_TIME)
    two = sign(rsa_signed, cert=ec_cert, key=ec_key, root=root,
               field="OrgSeal", when=ECDSA_SIGNING_TIME)
    tsa = DummyTimeStamper(
        tsa_cert=to_asn1_cert(tsa_cert),
        tsa_key=to_asn1_key(tsa_key),
        certs_to_embed=SimpleCertificateStore.from_certs([to_asn1_cert(root)]),
        fixed_dt=TST_TIME,
    )
    timestamped = sign(base, cert=rsa_cert, key=rsa_key, root=root,
                       field="Signature1", when=RSA_SIGNING_TIME, timestamper=tsa)
    changed = replace_content(rsa_signed)
    annotated = add_text_annotation(rsa_signed)

    # file, bytes, kinds of non-signature revisions (1-based index), our
    # verdict per signature, and what pyHanko's bottom line is known to be.
    outputs = [
        ("rsa-signed.pdf", rsa_signed, {}, ["valid"], [True]),
        ("ecdsa-signed.pdf", ecdsa_signed, {}, ["valid"], [True]),
        ("two-signatures.pdf", two, {}, ["valid", "valid"], [True, True]),
        ("timestamped.pdf", timestamped, {}, ["valid"], [True]),
        ("changed-after.pdf", changed, {3: "content"}, ["invalid"], [False]),
        # pyHanko's default diff policy whitelists no annotation other than
        # signature widgets, so it calls any added comment a modification
        # of level OTHER. An approval signature without /DocMDP or /Lock
        # allows annotations (ISO 32000-1 12.8.2.2), so we expect "valid".
        ("annotated-after.pdf", annotated, {3: "annotations"}, ["valid"], [False]),
    ]
    expected = {
        "generator": f"pyHanko {dist_version('pyhanko')}",
        "anchors": "root.pem",
        "crl": "root.crl",
        "note": "revision 1 is the unsigned base PDF; covers_revision is the "
                "1-based revision whose end equals the ByteRange end; "
                "changes_after is the most serious kind of change in later "
                "revisions (content > annotations > signatures > none); "
                "pyhanko.* is pyHanko's own validation (trust root.pem, "
                "CRL root.crl with revocation_mode=require, no fetching), kept for reference",
        "files": {},
    }
    problems = []
    for fname, data, after, verdicts, ph_lines in outputs:
        (outdir / fname).write_bytes(data)
        res = analyse(outdir / fname, root_pem, crl_der, after)
        for sig, verdict, ph_line in zip(res["signatures"], verdicts, ph_lines, strict=True):
            sig["verdict"] = verdict
            ph = sig["pyhanko"]
            if not (ph["intact"] and ph["valid"] and ph["trusted"]):
                problems.append(f"{fname}/{sig['field']}: pyHanko says not intact/valid/trusted: {ph}")
            if ph["bottom_line"] != ph_line:
                problems.append(f"{fname}/{sig['field']}: pyHanko bottom line {ph['bottom_line']}, expected {ph_line}")
            if sig["timestamped"] and not (ph["timestamp"]["intact"] and ph["timestamp"]["valid"] and ph["timestamp"]["trusted"]):
                problems.append(f"{fname}/{sig['field']}: timestamp not valid per pyHanko")
            if (verdict == "valid") != ph_line:
                ph["disagrees"] = (
                    "pyHanko's default diff policy does not whitelist added "
                    "non-widget annotations; the signature itself is intact, "
                    "valid and trusted"
                )
        expected["files"][fname] = res

    (outdir / "expected.json").write_text(
        json.dumps(expected, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    for fname, res in expected["files"].items():
        print(f"{fname}: {(outdir / fname).stat().st_size} bytes, {res['revisions']} revisions")
        for s in res["signatures"]:
            ph = s["pyhanko"]
            print(f"  {s['field']}: {s['algorithm']} rev {s['covers_revision']} "
                  f"after={s['changes_after']} verdict={s['verdict']} | pyHanko intact={ph['intact']} "
                  f"valid={ph['valid']} trusted={ph['trusted']} cov={ph['coverage']} "
                  f"mod={ph['modification_level']} docmdp_ok={ph['docmdp_ok']} "
                  f"bottom_line={ph['bottom_line']}")
    if problems:
        print("DISAGREEMENT:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
