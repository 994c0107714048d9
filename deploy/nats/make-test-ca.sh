#!/bin/sh
# Make a private CA and one certificate per NATS node, for TESTING a region's TLS settings.
# In production use your organisation's CA (or cert-manager): keys made here never leave
# OUT_DIR and are not protected by a passphrase.
#
#   deploy/nats/make-test-ca.sh OUT_DIR [NODE_NAME ...]     (default nodes: nats-1 nats-2 nats-3)
#
# Writes OUT_DIR/ca.pem, OUT_DIR/ca-key.pem and, per node, OUT_DIR/<node>/server.pem and
# OUT_DIR/<node>/server-key.pem (mode 0600), valid for <node>, <node>.region.example,
# <node>.nats.istmo.svc.cluster.local, localhost and 127.0.0.1, for both server and client
# use (routes authenticate each other with them). Copy OUT_DIR/<node>/* and ca.pem to
# /etc/nats/tls/ on that node; give ca.pem to every client (SSL_CERT_FILE=ca.pem).
set -eu
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [NODE_NAME ...]" >&2; exit 2; }
out=$1; shift
[ $# -ge 1 ] || set -- nats-1 nats-2 nats-3
umask 077
mkdir -p "$out"
if [ ! -f "$out/ca.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=Istmo test CA" -keyout "$out/ca-key.pem" -out "$out/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
fi
for node in "$@"; do
  case "$node" in *[!a-z0-9-]*|"") echo "bad node name: $node" >&2; exit 2;; esac
  mkdir -p "$out/$node"
  ext="$out/$node/ext.cnf"
  cat > "$ext" <<CNF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:$node,DNS:$node.region.example,DNS:$node.nats.istmo.svc.cluster.local,DNS:localhost,IP:127.0.0.1
CNF
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$node" \
    -keyout "$out/$node/server-key.pem" -out "$out/$node/server.csr" 2>/dev/null
  openssl x509 -req -in "$out/$node/server.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" \
    -CAcreateserial -days 397 -extfile "$ext" -out "$out/$node/server.pem" 2>/dev/null
  rm -f "$out/$node/server.csr" "$ext"
  cp "$out/ca.pem" "$out/$node/ca.pem"
done
chmod 644 "$out/ca.pem"
echo "CA in $out/ca.pem; node certificates in $out/<node>/"
