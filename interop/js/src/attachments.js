// Attachments (docs/spec/attachments.md), from the spec alone: each file's key from the
// bulletin's content key, chunks sealed with their place bound in, and the digest the
// header signs.
import { gcm } from "@noble/ciphers/aes.js";
import { hkdf } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { WireError, concat, enc, hex } from "./canonical.js";

export const TAG_BYTES = 16;
export const CHUNK_HEADER = "Istmo-Chunk";
export const CHUNK_KIND = "chunk";

const u32 = (n) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
};
const u64 = (n) => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n));
  return b;
};

export const chunkCount = (size, chunkSize) => Math.max(1, Math.ceil(size / chunkSize));
export const keyInfo = (bulletinId, index) => concat(enc("istmo/v1/attachment\0"), enc(bulletinId), new Uint8Array([0]), u32(index));
/** HKDF-SHA256(ikm = content key, salt = none, info, 32 bytes). */
export const attachmentKey = (contentKey, bulletinId, index) => hkdf(sha256, contentKey, undefined, keyInfo(bulletinId, index), 32);

export function chunkNonce(chunk, last) {
  const out = new Uint8Array(12);
  out.set(u64(chunk), 3); // 11 bytes big-endian: chunk < 2^64 leaves the top three zero
  out[11] = last ? 1 : 0;
  return out;
}
export const chunkAad = (bulletinId, attachment, chunk, last) =>
  concat(enc("istmo/v1/chunk\0"), enc(bulletinId), u32(attachment), u64(chunk), new Uint8Array([last ? 1 : 0]));

export const sealChunk = (key, bulletinId, attachment, chunk, plain, last) =>
  gcm(key, chunkNonce(chunk, last), chunkAad(bulletinId, attachment, chunk, last)).encrypt(plain);

export function openChunk(key, bulletinId, attachment, chunk, ct, last) {
  try {
    return gcm(key, chunkNonce(chunk, last), chunkAad(bulletinId, attachment, chunk, last)).decrypt(ct);
  } catch {
    throw new WireError("chunk_invalid", "attachment chunk does not open");
  }
}

/** The plaintext length of chunk j of an attachment {size, chunk_size, chunks}. */
export const plainSize = (ref, j) => (j < ref.chunks - 1 ? ref.chunk_size : ref.size - ref.chunk_size * (ref.chunks - 1));

/** The signed digest, fed each chunk ciphertext's SHA-256 in order. */
export class ChunkDigest {
  constructor(attachment, chunks) {
    this.parts = [enc("istmo/v1/chunks\0"), u32(attachment), u64(chunks)];
    this.left = chunks;
  }
  add(chunkSha256) {
    if (this.left <= 0 || chunkSha256.length !== 32) throw new Error("one 32-byte hash per chunk, no more than announced");
    this.parts.push(chunkSha256);
    this.left--;
  }
  input() {
    return concat(...this.parts);
  }
  hexdigest() {
    if (this.left) throw new Error(`${this.left} chunks not added yet`);
    return hex(sha256(this.input()));
  }
}
