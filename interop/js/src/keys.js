// Keys and key ids (docs/spec/keys.md): Ed25519 signing keys, HPKE encryption keys of the
// two suites, and the checks a registered public key must pass.
import { ed25519, x25519 } from "@noble/curves/ed25519.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { ml_kem768 } from "@noble/post-quantum/ml-kem.js";
import { WireError, concat, enc, hex } from "./canonical.js";

export const KEMS = ["MLKEM768-X25519", "X25519"];
export const MLKEM768_PUBLIC = 1184;
export const MLKEM768_SEED = 64;

const P = 2n ** 255n - 19n;
const low255 = (b) => {
  let n = 0n;
  for (let k = 31; k >= 0; k--) n = (n << 8n) | BigInt(b[k]);
  return n & ((1n << 255n) - 1n);
};
// y of the Ed25519 points of small order, and u of the X25519 points of low order.
const ED_SMALL_ORDER_Y = new Set(
  [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
  ].map((h) => low255(Buffer.from(h, "hex"))),
);
const X_LOW_ORDER_U = new Set([
  0n,
  1n,
  low255(Buffer.from("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800", "hex")),
  low255(Buffer.from("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157", "hex")),
  P - 1n,
  P,
  P + 1n,
]);

export function signingKid(publicKey) {
  return "sig-" + hex(sha256(concat(enc("istmo/v1/kid/ed25519\0"), publicKey))).slice(0, 32);
}

export function encryptionKid(kem, publicKey) {
  return "kem-" + hex(sha256(concat(enc(`istmo/v1/kid/${kem}\0`), publicKey))).slice(0, 32);
}

/** Refuse an Ed25519 public key that is not 32 bytes, not canonical, or of small order. */
export function checkVerifyKey(publicKey) {
  if (publicKey.length !== 32) throw new WireError("bad_key", "Ed25519 public key must be 32 bytes");
  const y = low255(publicKey);
  if (y >= P) throw new WireError("bad_key", "Ed25519 public key is not canonically encoded");
  if (ED_SMALL_ORDER_Y.has(y)) throw new WireError("bad_key", "Ed25519 public key is a small-order point");
  return publicKey;
}

/** Refuse an encryption public key of the wrong length or with a low-order X25519 part. */
export function checkEncryptionKey(kem, publicKey) {
  const want = kem === "MLKEM768-X25519" ? MLKEM768_PUBLIC + 32 : kem === "X25519" ? 32 : -1;
  if (want < 0) throw new WireError("unsupported_suite", `unknown KEM ${kem}`);
  if (publicKey.length !== want) throw new WireError("bad_key", `${kem} public key must be ${want} bytes`);
  if (X_LOW_ORDER_U.has(low255(publicKey.slice(-32)))) {
    throw new WireError("bad_key", "X25519 public key is a low-order point");
  }
  return publicKey;
}

export function verifyKeyOf(privateSeed) {
  return ed25519.getPublicKey(privateSeed);
}

export function sign(privateSeed, message) {
  return ed25519.sign(message, privateSeed);
}

/** Ed25519 verification as RFC 8032 (strict: canonical S and R, no ZIP-215 leniency). */
export function verify(publicKey, signature, message) {
  checkVerifyKey(publicKey);
  if (signature.length !== 64) return false;
  try {
    return ed25519.verify(signature, message, publicKey, { zip215: false });
  } catch {
    return false;
  }
}

/** The public half of an encryption private key (see keys.md for the layouts). */
export function encryptionPublic(kem, privateKey) {
  if (kem === "X25519") {
    if (privateKey.length !== 32) throw new WireError("bad_key", "X25519 private key must be 32 bytes");
    return x25519.getPublicKey(privateKey);
  }
  if (kem !== "MLKEM768-X25519") throw new WireError("unsupported_suite", `unknown KEM ${kem}`);
  if (privateKey.length !== MLKEM768_SEED + 32) {
    throw new WireError("bad_key", "hybrid private key must be 96 bytes");
  }
  const { publicKey } = ml_kem768.keygen(privateKey.slice(0, MLKEM768_SEED));
  return concat(publicKey, x25519.getPublicKey(privateKey.slice(MLKEM768_SEED)));
}
