// Sealing and opening envelopes (docs/spec/envelope.md), from the spec alone.
import { gcm } from "@noble/ciphers/aes.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { randomBytes } from "@noble/hashes/utils.js";
import { WireError, b64d, b64e, canonical, concat, enc, equalBytes, hex, strictParse } from "./canonical.js";
import { checkConsent } from "./forwarding.js";
import { openGroupWrap } from "./groups.js";
import * as hpke from "./hpke.js";
import { encryptionKid, sign, signingKid, verify } from "./keys.js";
import * as model from "./model.js";

export const MAX_ENVELOPE_BYTES = 1024 * 1024;
const MAX_WRAP_BYTES = 4096;
const NUL = new Uint8Array([0]);

export const commitment = (contentKey) => sha256(concat(enc("istmo/v1/commit\0"), contentKey));
export const headerDigest = (h) => sha256(concat(enc("istmo/v1/header\0"), canonical(h)));
export const wrapInfo = (hd, recipient, kid) =>
  concat(enc("istmo/v1/wrap\0"), hd, NUL, enc(recipient), NUL, enc(kid));

export function bodyDigest(body) {
  const nonce = b64d(body.nonce, "body.nonce", 12);
  const ct = b64d(body.ct, "body.ct", MAX_ENVELOPE_BYTES);
  return hex(sha256(concat(nonce, ct)));
}

/** The bytes the originator's Ed25519 signature covers. */
export function signingInput(env) {
  const signed = { header: env.header, body_digest: bodyDigest(env.body), wraps: env.wraps };
  if (env.groups !== undefined) signed.groups = env.groups; // signed only when present
  return concat(enc("istmo/v1/envelope\0"), canonical(signed));
}

/** Parse published bytes into an envelope in normal form (throws WireError). */
export function parseEnvelope(raw, maxBytes = MAX_ENVELOPE_BYTES) {
  return model.envelope(strictParse(raw, maxBytes));
}

export const encodeEnvelope = (env) => canonical(env);
/** Hex SHA-256 of the canonical envelope: what receipts and dedupe ids name. */
export const envelopeDigest = (env) => hex(sha256(canonical(env)));

/** Check the signature under the originator's key (public bytes, kid checked). */
export function verifyEnvelope(env, senderPublic) {
  if (signingKid(senderPublic) !== env.sig.kid) {
    throw new WireError("key_not_bound_to_sender", "envelope is signed by another key");
  }
  const sig = b64d(env.sig.value, "sig.value", 64);
  if (!verify(senderPublic, sig, signingInput(env))) {
    throw new WireError("signature", "signature does not verify");
  }
}

const refuse = (code) => {
  throw new WireError(code, "bulletin does not open");
};

/**
 * Verify and open env for recipient, holding keys {kid: {kem, private}} and, for a
 * group-sealed bulletin, epochKeys [{group, epoch, kid, key}] (checked already: groups.js).
 * For a forward with a grant, grantKey(agency, kid) gives the originator's signing key
 * the grant names, {public, revoked_at}, from the signed directory (forwarding.md).
 * Steps 1-6 and 8 of the spec; returns {inner, contentKey, forwarded} (attachments derive
 * from the key; forwarded is null, or {bulletin_id, originator, forwarded_by, consent}).
 */
export function openEnvelopeKeyed(env, { recipient, keys, senderPublic, epochKeys = [], grantKey = null }) {
  verifyEnvelope(env, senderPublic); // 1
  // 2: named, or (an audience, ADR 37) any agency but the originator: that it is a member
  // of an epoch addressed is proven by the epoch key it opens the group wrap with.
  const named = env.header.recipients.includes(recipient);
  if (!named && (env.header.audience === undefined || recipient === env.header.originator)) refuse("not_a_recipient");
  const hd = headerDigest(env.header);
  const wrap = env.wraps.find((w) => w.recipient === recipient);
  let contentKey;
  if (wrap) {
    const mine = keys[wrap.kid];
    if (!mine || mine.kem !== wrap.kem) refuse("recipient_key_unknown");
    try {
      const wrapBytes = b64d(wrap.enc, "wrap.enc", MAX_WRAP_BYTES); // 3
      contentKey = hpke.openTraced(wrap.kem, mine.private, wrapBytes, wrapInfo(hd, recipient, wrap.kid)).plaintext;
    } catch {
      refuse("wrap_invalid");
    }
  } else {
    // No wrap of its own: a group wrap under an epoch key it holds (groups.md).
    const gw = (env.groups ?? []).find((g) => epochKeys.some((k) => k.group === g.group && k.epoch === g.epoch && k.kid === g.kid));
    if (!gw) refuse("no_group_key");
    const held = epochKeys.find((k) => k.group === gw.group && k.epoch === gw.epoch && k.kid === gw.kid);
    contentKey = openGroupWrap(gw, held, hd); // 3
  }
  const committed = b64d(env.header.key_commitment, "header.key_commitment", 32); // 4
  if (contentKey.length !== 32 || !equalBytes(commitment(contentKey), committed)) refuse("key_commitment_mismatch");
  let plain;
  try {
    const nonce = b64d(env.body.nonce, "body.nonce", 12); // 5
    const ct = b64d(env.body.ct, "body.ct", MAX_ENVELOPE_BYTES);
    plain = gcm(contentKey, nonce, hd).decrypt(ct);
  } catch {
    refuse("body_invalid");
  }
  let inner;
  try {
    inner = model.innerBulletin(strictParse(plain, plain.length));
  } catch {
    refuse("inner_malformed");
  }
  const h = env.header; // 6
  if (inner.bulletin_id !== h.bulletin_id || inner.originator !== h.originator || inner.recipients.join(",") !== h.recipients.join(",")
    || JSON.stringify(inner.audience ?? null) !== JSON.stringify(h.audience ?? null)
    || (inner.content.attachments?.length ?? 0) !== (h.attachments?.length ?? 0)) {
    refuse("inner_outer_mismatch");
  }
  if (inner.content.acknowledges && h.in_reply_to == null) refuse("malformed"); // an acknowledgement answers a bulletin
  let forwarded = null;
  if (h.forward_of) { // 8
    const consent = checkConsent(h, recipient, grantKey);
    forwarded = { bulletin_id: h.forward_of.bulletin_id, originator: h.forward_of.originator, forwarded_by: h.originator, consent };
  }
  return { inner, contentKey, forwarded };
}

/** openEnvelopeKeyed's inner bulletin only. */
export const openEnvelope = (env, opts) => openEnvelopeKeyed(env, opts).inner;

/**
 * Seal content {title, text} for recipients {agency: {kem, public}} and sign it.
 * Returns the envelope in normal form (encode it with encodeEnvelope).
 */
export function sealEnvelope({ content, labels, originator, signingSeed, signingPublic, recipients, now, expiresAt, notBefore, bulletinId, supersedes }) {
  const order = Object.keys(recipients).sort();
  if (order.length === 0) throw new Error("a bulletin needs at least one recipient");
  const key = randomBytes(32);
  const header = model.header({
    v: 1,
    bulletin_id: bulletinId ?? crypto.randomUUID(),
    originator,
    created_at: now,
    ...(notBefore != null ? { not_before: notBefore } : {}),
    ...(expiresAt != null ? { expires_at: expiresAt } : {}),
    ...(supersedes != null ? { supersedes } : {}),
    labels,
    recipients: order,
    aead: "AES-256-GCM",
    key_commitment: b64e(commitment(key)),
    signer: signingKid(signingPublic),
  });
  const hd = headerDigest(header);
  const inner = { bulletin_id: header.bulletin_id, originator, recipients: order, content };
  const nonce = randomBytes(12);
  const body = { nonce: b64e(nonce), ct: b64e(gcm(key, nonce, hd).encrypt(canonical(inner))) };
  const wraps = order.map((r) => {
    const { kem, public: pub } = recipients[r];
    const kid = encryptionKid(kem, pub);
    return { recipient: r, kid, kem, enc: b64e(hpke.seal(kem, pub, wrapInfo(hd, r, kid), key)) };
  });
  const env = { v: 1, header, body, wraps, sig: { alg: "Ed25519", kid: header.signer, value: "" } };
  env.sig.value = b64e(sign(signingSeed, signingInput(env)));
  return env;
}
