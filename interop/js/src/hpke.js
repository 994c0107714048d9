// HPKE (RFC 9180), base mode, single shot, as docs/spec/envelope.md fixes it: KDF
// HKDF-SHA256 (0x0001), AEAD AES-256-GCM (0x0002), and one of two KEMs:
//   MLKEM768-X25519: X-Wing (0x647a): ML-KEM-768 and X25519, combined with SHA3-256;
//   X25519: DHKEM(X25519, HKDF-SHA256) (0x0020).
import { gcm } from "@noble/ciphers/aes.js";
import { x25519 } from "@noble/curves/ed25519.js";
import { extract, expand } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { sha3_256 } from "@noble/hashes/sha3.js";
import { randomBytes } from "@noble/hashes/utils.js";
import { ml_kem768 } from "@noble/post-quantum/ml-kem.js";
import { WireError, concat, enc } from "./canonical.js";
import { MLKEM768_SEED, checkEncryptionKey } from "./keys.js";

export const SUITES = {
  "MLKEM768-X25519": { kem: 0x647a, kdf: 0x0001, aead: 0x0002, nEnc: 1088 + 32 },
  X25519: { kem: 0x0020, kdf: 0x0001, aead: 0x0002, nEnc: 32 },
};
export const XWING_LABEL = enc("\\.//^\\");
const MLKEM_CT = 1088;

const i2osp = (n, len) => {
  const out = new Uint8Array(len);
  for (let k = len - 1; k >= 0; k--, n >>= 8) out[k] = n & 0xff;
  return out;
};
const labeledExtract = (suiteId, salt, label, ikm) =>
  extract(sha256, concat(enc("HPKE-v1"), suiteId, enc(label), ikm), salt);
const labeledExpand = (suiteId, prk, label, info, len) =>
  expand(sha256, prk, concat(i2osp(len, 2), enc("HPKE-v1"), suiteId, enc(label), info), len);

function suiteOf(kem) {
  const s = SUITES[kem];
  if (!s) throw new WireError("unsupported_suite", `unknown KEM ${kem}`);
  return s;
}

function keySchedule(kem, sharedSecret, info) {
  const s = suiteOf(kem);
  const suiteId = concat(enc("HPKE"), i2osp(s.kem, 2), i2osp(s.kdf, 2), i2osp(s.aead, 2));
  const empty = new Uint8Array(0);
  const pskIdHash = labeledExtract(suiteId, empty, "psk_id_hash", empty);
  const infoHash = labeledExtract(suiteId, empty, "info_hash", info);
  const context = concat(new Uint8Array([0]), pskIdHash, infoHash);
  const secret = labeledExtract(suiteId, sharedSecret, "secret", empty);
  return {
    suiteId,
    key: labeledExpand(suiteId, secret, "key", context, 32),
    baseNonce: labeledExpand(suiteId, secret, "base_nonce", context, 12),
  };
}

function dhkemSharedSecret(dh, kemContext) {
  const kemSuite = concat(enc("KEM"), i2osp(0x0020, 2));
  const prk = labeledExtract(kemSuite, new Uint8Array(0), "eae_prk", dh);
  return labeledExpand(kemSuite, prk, "shared_secret", kemContext, 32);
}

function xwingCombine(ssM, ssX, ctX, pkX) {
  return sha3_256(concat(ssM, ssX, ctX, pkX, XWING_LABEL));
}

/** Encapsulate to a recipient's public key: { enc, sharedSecret }. */
function encap(kem, publicKey) {
  checkEncryptionKey(kem, publicKey);
  const eph = randomBytes(32);
  if (kem === "X25519") {
    const encBytes = x25519.getPublicKey(eph);
    const dh = x25519.getSharedSecret(eph, publicKey);
    return { enc: encBytes, sharedSecret: dhkemSharedSecret(dh, concat(encBytes, publicKey)) };
  }
  const pkM = publicKey.slice(0, publicKey.length - 32);
  const pkX = publicKey.slice(-32);
  const { cipherText: ctM, sharedSecret: ssM } = ml_kem768.encapsulate(pkM);
  const ctX = x25519.getPublicKey(eph);
  const ssX = x25519.getSharedSecret(eph, pkX);
  return { enc: concat(ctM, ctX), sharedSecret: xwingCombine(ssM, ssX, ctX, pkX) };
}

/** Decapsulate with our private key: the shared secret, and the KEM's inner values. */
export function decap(kem, privateKey, encBytes) {
  if (kem === "X25519") {
    const dh = x25519.getSharedSecret(privateKey, encBytes);
    const pkR = x25519.getPublicKey(privateKey);
    return { sharedSecret: dhkemSharedSecret(dh, concat(encBytes, pkR)), inner: { x25519_dh: dh } };
  }
  const seed = privateKey.slice(0, MLKEM768_SEED);
  const skX = privateKey.slice(MLKEM768_SEED);
  const { secretKey } = ml_kem768.keygen(seed);
  const ctM = encBytes.slice(0, MLKEM_CT);
  const ctX = encBytes.slice(MLKEM_CT);
  const ssM = ml_kem768.decapsulate(ctM, secretKey);
  const ssX = x25519.getSharedSecret(skX, ctX);
  const pkX = x25519.getPublicKey(skX);
  return {
    sharedSecret: xwingCombine(ssM, ssX, ctX, pkX),
    inner: { mlkem_shared_secret: ssM, x25519_shared_secret: ssX },
  };
}

/** HPKE single-shot seal: enc || AES-256-GCM(key, base_nonce, plaintext, aad = ""). */
export function seal(kem, publicKey, info, plaintext) {
  const { enc: encBytes, sharedSecret } = encap(kem, publicKey);
  const { key, baseNonce } = keySchedule(kem, sharedSecret, info);
  return concat(encBytes, gcm(key, baseNonce).encrypt(plaintext));
}

/** HPKE single-shot open; returns the plaintext and every intermediate value. */
export function openTraced(kem, privateKey, wrap, info) {
  const { nEnc } = suiteOf(kem);
  if (wrap.length < nEnc + 16) throw new WireError("malformed", "wrap too short");
  const encBytes = wrap.slice(0, nEnc);
  const { sharedSecret, inner } = decap(kem, privateKey, encBytes);
  const { suiteId, key, baseNonce } = keySchedule(kem, sharedSecret, info);
  const plaintext = gcm(key, baseNonce).decrypt(wrap.slice(nEnc));
  return { suiteId, enc: encBytes, inner, sharedSecret, key, baseNonce, plaintext };
}
