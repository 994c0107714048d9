// Community group keys (docs/spec/groups.md), from the spec alone: an epoch's key id,
// commitment and members digest, the manager's signed statement, a member's HPKE wrap of
// the epoch key, and an envelope's group wrap of the content key.
import { gcm } from "@noble/ciphers/aes.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { WireError, b64d, canonical, concat, enc, equalBytes, hex } from "./canonical.js";
import * as hpke from "./hpke.js";
import { signingKid, verify } from "./keys.js";
import { AGENCY_ID, GROUP_KID, GROUP_NAME, KID, B64 } from "./model.js";

const NUL = new Uint8Array([0]);
const MAX_WRAP_BYTES = 4096;

export const epochCommitment = (epochKey) => sha256(concat(enc("istmo/v1/group-key\0"), epochKey));
export const groupKid = (commitment) => "gk-" + hex(sha256(concat(enc("istmo/v1/kid/group\0"), commitment))).slice(0, 32);
export const membersDigestInput = (members) => concat(enc("istmo/v1/group-members\0"), canonical([...new Set(members)].sort()));
export const membersDigest = (members) => hex(sha256(membersDigestInput(members)));
export const epochSigningInput = (statement) => concat(enc("istmo/v1/group-epoch\0"), canonical(statement));

/** The HPKE info of a member's wrap of an epoch key. */
export const memberWrapInfo = (statement, member, kid) =>
  concat(
    enc("istmo/v1/group-wrap"), NUL, enc(statement.group), NUL, enc(String(statement.epoch)), NUL,
    enc(member), NUL, enc(kid), NUL, b64d(statement.key_commitment, "key_commitment", 32),
  );

/** The associated data of an envelope's group wrap. */
export const groupContentAad = (hd, group, epoch) =>
  concat(enc("istmo/v1/group-content\0"), hd, NUL, enc(group), NUL, enc(String(epoch)));

const bad = (code, message) => {
  throw new WireError(code, message);
};

/** A signed epoch {statement, kid, sig}, strictly shaped (throws WireError "malformed"). */
export function signedEpoch(x) {
  const keys = (o) => (o && typeof o === "object" && !Array.isArray(o) ? Object.keys(o).sort().join(",") : "");
  if (keys(x) !== "kid,sig,statement") bad("malformed", "signed epoch: other fields");
  const st = x.statement;
  if (keys(st) !== "epoch,group,issued_at,key_commitment,kid,manager,member_count,members_digest,v") bad("malformed", "epoch statement: other fields");
  if (st.v !== 1) bad("unsupported_version", "epoch statement version");
  const okInt = (v, min, max) => Number.isSafeInteger(v) && v >= min && v <= max;
  if (!GROUP_NAME.test(st.group) || !okInt(st.epoch, 1, 2 ** 40) || !AGENCY_ID.test(st.manager) || !okInt(st.issued_at, 0, 2 ** 40)
    || !okInt(st.member_count, 1, 10_000) || !/^[0-9a-f]{64}$/.test(st.members_digest) || !B64.test(st.key_commitment)
    || !GROUP_KID.test(st.kid) || !KID.test(x.kid) || !B64.test(x.sig)) {
    bad("malformed", "epoch statement: a field is out of its pattern");
  }
  return x;
}

/**
 * The statement of a signed epoch once the manager's signature verifies under
 * managerPublic and the key id matches the commitment.
 */
export function verifyEpoch(signed, managerPublic) {
  signedEpoch(signed);
  if (signingKid(managerPublic) !== signed.kid) bad("key_not_bound_to_sender", "epoch signed by another key");
  if (!verify(managerPublic, b64d(signed.sig, "sig", 64), epochSigningInput(signed.statement))) bad("signature", "epoch signature does not verify");
  const commitment = b64d(signed.statement.key_commitment, "key_commitment", 32);
  if (commitment.length !== 32 || groupKid(commitment) !== signed.statement.kid) bad("malformed", "epoch key id does not match its commitment");
  return signed.statement;
}

/**
 * The epoch key in member's wrap {agency, kid, kem, enc}, with keys {kid: {kem, private}}:
 * checked against the statement's commitment. Returns {group, epoch, kid, key}.
 */
export function unwrapEpochKey(statement, wrap, member, keys) {
  const mine = keys[wrap.kid];
  if (wrap.agency !== member || !mine || mine.kem !== wrap.kem) bad("recipient_key_unknown", "epoch key does not open");
  let key;
  try {
    key = hpke.openTraced(wrap.kem, mine.private, b64d(wrap.enc, "enc", MAX_WRAP_BYTES), memberWrapInfo(statement, member, wrap.kid)).plaintext;
  } catch {
    bad("wrap_invalid", "epoch key does not open");
  }
  const commitment = b64d(statement.key_commitment, "key_commitment", 32);
  if (key.length !== 32 || !equalBytes(epochCommitment(key), commitment)) bad("key_commitment_mismatch", "epoch key does not open");
  return { group: statement.group, epoch: statement.epoch, kid: statement.kid, key };
}

/** The content key inside an envelope's group wrap, under epochKey {group, epoch, kid, key}. */
export function openGroupWrap(gw, epochKey, hd) {
  if (gw.group !== epochKey.group || gw.epoch !== epochKey.epoch || gw.kid !== epochKey.kid) bad("recipient_key_unknown", "bulletin does not open");
  try {
    const nonce = b64d(gw.nonce, "group.nonce", 12);
    const ct = b64d(gw.ct, "group.ct", 48);
    return gcm(epochKey.key, nonce, groupContentAad(hd, gw.group, gw.epoch)).decrypt(ct);
  } catch {
    bad("wrap_invalid", "bulletin does not open");
  }
}
