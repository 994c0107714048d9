// Documents signed by their author (receipts, withdrawals) and by the broker's directory
// key (excerpts, change lists): docs/spec/messages.md.
import { WireError, b64d, b64e, canonical, concat, enc, strictParse } from "./canonical.js";
import { checkVerifyKey, sign, signingKid, verify } from "./keys.js";

export function documentSigningInput(domain, doc) {
  const { sig: _sig, ...fields } = doc;
  return concat(enc(`istmo/v1/${domain}\0`), canonical(fields));
}

/** A signed receipt: recipient received the envelope with digest envelopeDigest. */
export function signReceipt({ bulletinId, originator, recipient, envelopeDigest, receivedAt, seed, publicKey }) {
  const receipt = {
    v: 1,
    bulletin_id: bulletinId,
    originator,
    recipient,
    envelope_digest: envelopeDigest,
    received_at: receivedAt,
    kid: signingKid(publicKey),
    sig: "",
  };
  receipt.sig = b64e(sign(seed, documentSigningInput("receipt", receipt)));
  return receipt;
}

export function verifyDocument(domain, doc, publicKey) {
  if (signingKid(publicKey) !== doc.kid) throw new WireError("key_not_bound_to_sender", `${domain} is signed by another key`);
  if (!verify(publicKey, b64d(doc.sig, `${domain}.sig`, 64), documentSigningInput(domain, doc))) {
    throw new WireError("signature", `${domain} signature does not verify`);
  }
}

/**
 * Check a signed directory answer ({excerpt|changes, kid, sig}) against the pinned key
 * and return what it signs. domain: "directory" or "directory-changes".
 */
export function verifyDirectoryAnswer(answer, domain, pinned) {
  const field = domain === "directory" ? "excerpt" : "changes";
  const keys = Object.keys(answer).sort().join(",");
  if (keys !== [field, "kid", "sig"].sort().join(",")) throw new WireError("malformed", `${domain} answer has other fields`);
  checkVerifyKey(pinned.public);
  if (answer.kid !== pinned.kid || signingKid(pinned.public) !== pinned.kid) {
    throw new WireError("directory_untrusted", "directory is signed by an unknown key");
  }
  const message = concat(enc(`istmo/v1/${domain}\0`), canonical(answer[field]));
  if (!verify(pinned.public, b64d(answer.sig, `${domain}.sig`, 64), message)) {
    throw new WireError("directory_untrusted", "directory signature does not verify");
  }
  return answer[field];
}

export const parseJson = (raw, maxBytes) => strictParse(raw, maxBytes);
