"""Agency software written against lienthong's contract alone, in Python.

The interoperability test (gateway/tests/trust/interop.rs) runs it in a virtualenv of
its own (requirements.txt). It generates the gRPC stubs from
proto/lienthong/v1/lienthong.proto with grpcio-tools, connects with mutual
TLS through grpcio (BoringSSL), and does what an agency's software does:

  send     build an Envelope, sign the DSSE PAE with the agency's key (ES256
           as fixed-size r||s, or RS256), stream it with an attachment, print
           the receipt; then send the same envelope with a damaged signature
           and print the refusal's google.rpc.ErrorInfo, read from
           grpc-status-details-bin
  receive  take the inbox with Receive, fetch each attachment with
           FetchAttachment and check its size and SHA-256 against the
           envelope, acknowledge, print what arrived

It prints one JSON object on stdout; the Rust test judges it.
"""

import argparse
import datetime
import hashlib
import importlib
import json
import os
import sys
import tempfile
import uuid

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from google.rpc import error_details_pb2
from grpc_status import rpc_status

PAYLOAD_TYPE = "application/vnd.lienthong.envelope.v1+protobuf"
CHUNK = 64 * 1024


def stubs(proto_root):
    """Generates lienthong_pb2 and lienthong_pb2_grpc into a temp dir."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="lienthong-stubs-")
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(proto_root, "lienthong", "v1", "lienthong.proto"),
        ]
    )
    if rc != 0:
        sys.exit(f"grpcio-tools could not compile the contract (exit {rc})")
    sys.path.insert(0, out)
    pb = importlib.import_module("lienthong.v1.lienthong_pb2")
    rpc = importlib.import_module("lienthong.v1.lienthong_pb2_grpc")
    return pb, rpc


def channel(args):
    def read(p):
        with open(p, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    # The gateway's certificate names localhost; connect to its address.
    return grpc.secure_channel(
        args.target, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def pae(payload_type, payload):
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign(key, message):
    """(JOSE algorithm, signature) of the agency's key over `message`."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        der = key.sign(message, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        size = (key.curve.key_size + 7) // 8
        return "ES256", r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256", key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    sys.exit(f"unsupported key type {type(key).__name__}")


def error_info(err):
    """The refusal's code, sentence and ErrorInfo, as grpcio gives them."""
    status = rpc_status.from_call(err)
    info = {}
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                ei = error_details_pb2.ErrorInfo()
                detail.Unpack(ei)
                info = {"reason": ei.reason, "domain": ei.domain}
    return {
        "code": err.code().name,
        "message": err.details(),
        "error_info": info,
    }


def send(args, pb, rpc):
    with open(args.sign_key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    with open(args.sign_chain, "rb") as f:
        chain = [
            c.public_bytes(serialization.Encoding.DER)
            for c in x509.load_pem_x509_certificates(f.read())
        ]
    attachment = ("Tờ trình từ phần mềm Python của cơ quan. " * 2000).encode()

    def signed_envelope(message_id):
        today = datetime.date.today()
        env = pb.Envelope(
            message_id=message_id,
            to=[args.to],
            document=pb.Document(
                document_id=f"{args.sender},{today:%Y/%m/%d},42/TTr-SKHCN",
                code_number="42",
                code_notation="TTr-SKHCN",
                promulgation_place="Lai Châu",
                promulgation_date=today.isoformat(),
                type=1,
                type_name="Tờ trình",
                subject=args.subject,
                content="Gửi từ một máy khách grpcio.",
                signer=pb.Signer(
                    competence="KT. Giám đốc",
                    position="Phó Giám đốc",
                    full_name="Trần Thị B",
                ),
                to_places=[args.to],
                attachments=[
                    pb.AttachmentRef(
                        name="to-trinh.txt",
                        content_type="text/plain; charset=utf-8",
                        size=len(attachment),
                        sha256=hashlib.sha256(attachment).digest(),
                    )
                ],
            ),
        )
        # `from` is a Python keyword.
        setattr(env, "from", args.sender)
        env.created_at.GetCurrentTime()
        payload = env.SerializeToString()
        alg, value = sign(key, pae(PAYLOAD_TYPE, payload))
        signed = pb.SignedEnvelope(
            payload=payload,
            payload_type=PAYLOAD_TYPE,
            signatures=[pb.Signature(algorithm=alg, value=value, certificates=chain)],
        )
        return env, signed, alg

    env, signed, alg = signed_envelope(str(uuid.uuid4()))

    def requests(signed_envelope):
        yield pb.SendRequest(envelope=signed_envelope)
        for i in range(0, len(attachment), CHUNK):
            yield pb.SendRequest(
                chunk=pb.AttachmentChunk(index=0, data=attachment[i : i + CHUNK])
            )

    with channel(args) as ch:
        exchange = rpc.ExchangeStub(ch)
        receipt = exchange.Send(requests(signed), timeout=60)
        # Another message, one bit of its signature changed.
        _, damaged, _ = signed_envelope(str(uuid.uuid4()))
        forged = bytearray(damaged.signatures[0].value)
        forged[-1] ^= 0x01
        damaged.signatures[0].value = bytes(forged)
        try:
            exchange.Send(requests(damaged), timeout=60)
            refusal = None
        except grpc.RpcError as err:
            refusal = error_info(err)
    return {
        "algorithm": alg,
        "message_id": env.message_id,
        "attachment_sha256": hashlib.sha256(attachment).hexdigest(),
        "attachment_size": len(attachment),
        "envelope_sha256": hashlib.sha256(signed.SerializeToString()).hexdigest(),
        "receipt": {
            "message_id": receipt.message_id,
            "from": getattr(receipt, "from"),
            "gateway": receipt.gateway,
            "duplicate": receipt.duplicate,
            "envelope_sha256": receipt.envelope_sha256.hex(),
            "accepted_at": receipt.accepted_at.seconds,
            "recipients": [
                {"organ_id": r.organ_id, "route": r.route} for r in receipt.recipients
            ],
        },
        "damaged_signature": refusal,
    }


def receive(args, pb, rpc):
    got = []
    with channel(args) as ch:
        exchange = rpc.ExchangeStub(ch)
        for d in exchange.Receive(pb.ReceiveRequest(follow=False), timeout=60):
            if d.HasField("notice"):
                continue
            env = pb.Envelope.FromString(d.envelope.payload)
            sender = getattr(env, "from")
            attachments = []
            for i, ref in enumerate(env.document.attachments):
                h, size = hashlib.sha256(), 0
                for chunk in exchange.FetchAttachment(
                    pb.FetchAttachmentRequest(
                        message_id=env.message_id, index=i, **{"from": sender}
                    ),
                    timeout=60,
                ):
                    h.update(chunk.data)
                    size += len(chunk.data)
                attachments.append(
                    {
                        "name": ref.name,
                        "size": size,
                        "sha256": h.hexdigest(),
                        "matches_envelope": h.digest() == ref.sha256 and size == ref.size,
                    }
                )
            exchange.Ack(pb.AckRequest(delivery_id=d.delivery_id), timeout=30)
            got.append(
                {
                    "message_id": env.message_id,
                    "from": sender,
                    "subject": env.document.subject,
                    "attempt": d.attempt,
                    "attachments": attachments,
                }
            )
    return {"deliveries": got}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("command", choices=["send", "receive"])
    p.add_argument("--proto-root", required=True)
    p.add_argument("--target", required=True, help="HOST:PORT of the gateway")
    p.add_argument("--ca", required=True, help="the CA of the gateway's certificate")
    p.add_argument("--cert", required=True, help="the agency's client certificate chain")
    p.add_argument("--key", required=True, help="its private key")
    p.add_argument("--sign-key", help="the agency's document-signing key (PKCS#8)")
    p.add_argument("--sign-chain", help="its certificate chain, leaf first")
    p.add_argument("--sender")
    p.add_argument("--to")
    p.add_argument("--subject", default="Tờ trình gửi từ Python")
    args = p.parse_args()
    pb, rpc = stubs(args.proto_root)
    result = send(args, pb, rpc) if args.command == "send" else receive(args, pb, rpc)
    json.dump(result, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
