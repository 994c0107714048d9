// Forwarding with consent (docs/spec/forwarding.md), from the spec alone: the originator's
// signed grant, the id of a request to forward, and what the one recipient of a forward
// checks of its consent.
import { sha256 } from "@noble/hashes/sha2.js";
import { WireError, b64d, b64e, canonical, concat, enc, hex } from "./canonical.js";
import { sign, signingKid, verify } from "./keys.js";

const refuse = (message) => {
  throw new WireError("forward_consent_invalid", message);
};

/** "istmo/v1/forward-grant" 0x00 canonical(every field of the grant but sig). */
export function grantSigningInput(grant) {
  const { sig: _sig, ...fields } = grant;
  return concat(enc("istmo/v1/forward-grant\0"), canonical(fields));
}

/** A grant {v, bulletin_id, originator, forwarder, recipient, issued_at, expires_at} signed by the originator's seed. */
export function signGrant(fields, seed, publicKey) {
  const grant = { v: 1, ...fields, kid: signingKid(publicKey), sig: "" };
  grant.sig = b64e(sign(seed, grantSigningInput(grant)));
  return grant;
}

export const requestIdInput = (bulletinId, forwarder, recipient) =>
  enc(`istmo/v1/forward-request\0${bulletinId}\0${forwarder}\0${recipient}`);

/** The id of the request to pass bulletinId from forwarder to recipient. */
export const requestId = (bulletinId, forwarder, recipient) =>
  "fwd-" + hex(sha256(requestIdInput(bulletinId, forwarder, recipient))).slice(0, 16);

/**
 * How consent to the forward with header h was given, as its recipient checks it:
 * "originator" (the grant checks out) or "policy" (no grant; the relay checked the
 * policy's). keyOf(agency, kid) gives that signing key as the signed directory lists it,
 * {public, revoked_at}, or null. Throws WireError "forward_consent_invalid".
 */
export function checkConsent(h, recipient, keyOf) {
  const cite = h.forward_of;
  if (!cite) throw new Error("not a forward");
  const g = cite.grant;
  if (!g) return "policy";
  // 1. The grant names this very forward.
  if (g.bulletin_id !== cite.bulletin_id || g.originator !== cite.originator || g.forwarder !== h.originator || g.recipient !== recipient) {
    refuse("the grant is for another forward");
  }
  // 2. Signed with a key the directory lists for the originator, not revoked when issued.
  const key = keyOf ? keyOf(g.originator, g.kid) : null;
  if (!key || (key.revoked_at != null && key.revoked_at <= g.issued_at) || signingKid(key.public) !== g.kid) {
    refuse("the grant is not signed by a key of the originator's");
  }
  // 3. The signature verifies.
  let ok = false;
  try {
    ok = verify(key.public, b64d(g.sig, "grant.sig", 64), grantSigningInput(g));
  } catch {
    ok = false;
  }
  if (!ok) refuse("the grant's signature does not verify");
  return "originator";
}
