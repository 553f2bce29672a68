#!/usr/bin/env bash
# A PKI made with OpenSSL's command line, in the file layout `lienthong
# dev-pki` writes, so the end-to-end suite can show that the gateway accepts
# certificates it did not make itself.
#
#   tests/openssl-pki.sh OUT_DIR
#
# Root CA (RSA-2048, `openssl req -x509`) → intermediate CA (EC P-256,
# `openssl ca`) → every leaf, so each chain has an intermediate:
#
#   ca.pem, ca.key.pem                the root: what trust.anchors and
#                                     tls.client_anchors list
#   intermediate.pem, .key.pem        the issuing CA
#   <organ_id>.pem, .key.pem          document-signing certificate (`openssl
#                                     ca`), leaf then intermediate; KeyUsage
#                                     digitalSignature + nonRepudiation
#   <organ_id>.client.pem, .key.pem   the agency software's TLS client
#                                     certificate (`openssl x509 -req`), leaf
#                                     then intermediate; EKU clientAuth
#   server.pem, server.key.pem        the gateway's TLS certificate
#                                     (localhost, 127.0.0.1; EKU serverAuth)
#   gateway.pem, gateway.key.pem      the gateway's receipt-signing certificate
#   directory.csv                     for `lienthong directory import`
#   openssl/                          the CA's working files (configs,
#                                     requests, `openssl ca` database)
#
# Agency keys alternate RSA-2048 and EC P-256; every key is PKCS#8 (`openssl
# pkcs8 -topk8 -nocrypt`). Names are UTF-8 Vietnamese (`-utf8`).
#
# Needs nothing but the openssl binary (1.1.1 or later) and bash; writes only
# into OUT_DIR; asks nothing. Without openssl it prints a SKIPPED line and
# exits with status 77, or fails when LIENTHONG_REQUIRE_SERVICES=1.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi

if ! command -v openssl >/dev/null 2>&1; then
  if [[ "${LIENTHONG_REQUIRE_SERVICES:-}" =~ ^(1|true|yes)$ ]]; then
    echo "FAILED: openssl-pki.sh: openssl not found, and LIENTHONG_REQUIRE_SERVICES=1 says it must be there" >&2
    exit 1
  fi
  echo "SKIPPED: openssl-pki.sh: openssl not found" >&2
  exit 77
fi

out="$1"
if [[ -e "$out/ca.key.pem" ]]; then
  echo "$out already holds a CA key; choose another directory or delete that one first" >&2
  exit 1
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$out/openssl"
mkdir -p "$work/newcerts"
umask 077

# The four agencies dev-pki makes: organ_id|key type|name|parent.
agencies=(
  "000.00.00.H35|rsa|Ủy ban nhân dân tỉnh Lai Châu|"
  "000.00.01.H35|rsa|Văn phòng Ủy ban nhân dân tỉnh Lai Châu|000.00.00.H35"
  "000.00.12.H35|ec|Sở Khoa học và Công nghệ tỉnh Lai Châu|000.00.00.H35"
  "000.00.31.H35|ec|Ủy ban nhân dân thành phố Lai Châu|000.00.00.H35"
)

# One configuration for everything, so no system openssl.cnf is read.
cnf="$work/openssl.cnf"
cat >"$cnf" <<EOF
# written by tests/openssl-pki.sh
[req]
distinguished_name = req_dn
string_mask        = utf8only
utf8               = yes
prompt             = no

[req_dn]

[ca]
default_ca = intermediate_ca

# The root issues the intermediate with \`openssl ca\`.
[root_ca]
dir              = $work/root
database         = \$dir/index.txt
serial           = \$dir/serial
new_certs_dir    = $work/newcerts
certificate      = $out/ca.pem
private_key      = $out/ca.key.pem
default_md       = sha256
default_days     = 3650
policy           = policy_agency
unique_subject   = no
preserve         = yes
email_in_dn      = no
copy_extensions  = none
string_mask      = utf8only

# The intermediate issues document-signing certificates with \`openssl ca\`.
[intermediate_ca]
dir              = $work/intermediate
database         = \$dir/index.txt
serial           = \$dir/serial
new_certs_dir    = $work/newcerts
certificate      = $out/intermediate.pem
private_key      = $out/intermediate.key.pem
default_md       = sha256
default_days     = 825
policy           = policy_agency
unique_subject   = no
preserve         = yes
email_in_dn      = no
copy_extensions  = none
string_mask      = utf8only

[policy_agency]
countryName            = optional
organizationName       = supplied
organizationalUnitName = optional
commonName             = supplied

[v3_root]
basicConstraints       = critical, CA:true
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[v3_intermediate]
basicConstraints       = critical, CA:true, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

# As the government CA's organisation certificates are.
[v3_signing]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature, nonRepudiation
extendedKeyUsage       = clientAuth, emailProtection
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[v3_client]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[v3_server]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature, keyEncipherment
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
EOF
export OPENSSL_CONF="$cnf"
unset RANDFILE

for ca in root intermediate; do
  mkdir -p "$work/$ca"
  : >"$work/$ca/index.txt"
  openssl rand -hex 16 >"$work/$ca/serial"
done

# A fresh key as PKCS#8 PEM: generated in the algorithm's own format first
# (PKCS#1 or SEC1 on older openssl), then converted.
new_key() { # new_key rsa|ec OUT
  local raw="$work/$(basename "$2").raw"
  case "$1" in
    rsa) openssl genrsa -out "$raw" 2048 2>/dev/null ;;
    ec) openssl ecparam -name prime256v1 -genkey -noout -out "$raw" ;;
    *) echo "unknown key type $1" >&2; return 1 ;;
  esac
  openssl pkcs8 -topk8 -nocrypt -in "$raw" -out "$2"
  rm -f "$raw"
  chmod 600 "$2"
}

subject() { # subject NAME [ORGAN_ID]
  if [[ -n "${2:-}" ]]; then
    printf '/C=VN/O=%s/OU=%s/CN=%s' "$1" "$2" "$1"
  else
    printf '/C=VN/O=%s/CN=%s' "$1" "$1"
  fi
}

new_request() { # new_request KEY SUBJECT OUT
  openssl req -new -utf8 -config "$cnf" -key "$1" -subj "$2" -out "$3"
}

# Issued by the intermediate with `openssl ca`.
ca_issue() { # ca_issue CA_SECTION EXT_SECTION CSR OUT DAYS
  openssl ca -batch -notext -utf8 -config "$cnf" -name "$1" -extensions "$2" \
    -days "$5" -in "$3" -out "$4" 2>"$work/ca.log" || {
    cat "$work/ca.log" >&2
    return 1
  }
}

# Issued by the intermediate with `openssl x509 -req`.
x509_issue() { # x509_issue EXT_SECTION CSR OUT
  openssl x509 -req -sha256 -days 825 -in "$2" \
    -CA "$out/intermediate.pem" -CAkey "$out/intermediate.key.pem" \
    -set_serial "0x$(openssl rand -hex 16)" \
    -extfile "$cnf" -extensions "$1" -out "$3" 2>"$work/x509.log" || {
    cat "$work/x509.log" >&2
    return 1
  }
}

# The leaf, then the intermediate: what a signer or TLS peer presents.
with_chain() { # with_chain LEAF_PEM OUT
  cat "$1" "$out/intermediate.pem" >"$2"
  chmod 644 "$2"
}

# --- root CA: self-signed with `openssl req -x509` ---------------------------
new_key rsa "$out/ca.key.pem"
openssl req -new -x509 -utf8 -config "$cnf" -sha256 -days 3650 \
  -key "$out/ca.key.pem" -extensions v3_root \
  -set_serial "0x$(openssl rand -hex 16)" \
  -subj "$(subject "Cơ quan chứng thực gốc thử nghiệm (OpenSSL)")" \
  -out "$out/ca.pem"
chmod 644 "$out/ca.pem"

# --- intermediate CA: issued by the root with `openssl ca` ------------------
new_key ec "$out/intermediate.key.pem"
new_request "$out/intermediate.key.pem" \
  "$(subject "Cơ quan chứng thực trung gian thử nghiệm (OpenSSL)")" "$work/intermediate.csr"
ca_issue root_ca v3_intermediate "$work/intermediate.csr" "$out/intermediate.pem" 3650
chmod 644 "$out/intermediate.pem"

# --- agencies -----------------------------------------------------------------
csv="$out/directory.csv"
printf 'organ_id,name,parent,email,signing_cert,client_cert\n' >"$csv"
for row in "${agencies[@]}"; do
  IFS='|' read -r id kt name parent <<<"$row"

  # Document-signing certificate (`openssl ca`).
  new_key "$kt" "$out/$id.key.pem"
  new_request "$out/$id.key.pem" "$(subject "$name" "$id")" "$work/$id.csr"
  ca_issue intermediate_ca v3_signing "$work/$id.csr" "$work/$id.leaf.pem" 825
  with_chain "$work/$id.leaf.pem" "$out/$id.pem"

  # The agency software's TLS client certificate (`openssl x509 -req`).
  new_key "$kt" "$out/$id.client.key.pem"
  new_request "$out/$id.client.key.pem" "$(subject "$name" "$id")" "$work/$id.client.csr"
  x509_issue v3_client "$work/$id.client.csr" "$work/$id.client.leaf.pem"
  with_chain "$work/$id.client.leaf.pem" "$out/$id.client.pem"

  printf '%s,%s,%s,,%s,%s\n' "$id" "$name" "$parent" "$id.pem" "$id.client.pem" >>"$csv"
done
chmod 644 "$csv"

# --- the gateway: TLS server and receipt-signing certificates -----------------
new_key ec "$out/server.key.pem"
new_request "$out/server.key.pem" "$(subject "lienthong OpenSSL test gateway" lienthong)" "$work/server.csr"
x509_issue v3_server "$work/server.csr" "$work/server.leaf.pem"
with_chain "$work/server.leaf.pem" "$out/server.pem"

new_key ec "$out/gateway.key.pem"
new_request "$out/gateway.key.pem" "$(subject "lienthong OpenSSL test gateway" lienthong)" "$work/gateway.csr"
ca_issue intermediate_ca v3_signing "$work/gateway.csr" "$work/gateway.leaf.pem" 825
with_chain "$work/gateway.leaf.pem" "$out/gateway.pem"

# --- check what was made, with openssl's own verifier -------------------------
for f in "$out"/*.pem; do
  case "$f" in
    *.key.pem | "$out/ca.pem" | "$out/intermediate.pem") continue ;;
  esac
  purpose=smimesign
  case "$f" in
    *.client.pem) purpose=sslclient ;;
    "$out/server.pem") purpose=sslserver ;;
  esac
  if ! msg="$(openssl verify -purpose "$purpose" -CAfile "$out/ca.pem" \
    -untrusted "$out/intermediate.pem" "$f" 2>&1)"; then
    echo "openssl verify refuses $f: $msg" >&2
    exit 1
  fi
done

echo "wrote an OpenSSL PKI (root → intermediate → leaves) to $out"
