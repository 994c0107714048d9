// The shapes of the wire objects (docs/spec/envelope.md, messages.md): exact field sets,
// types and patterns, and each object's normal form (defaults filled in, nulls dropped
// where the spec says so). A check names the field, never its value.
import { WireError } from "./canonical.js";

export const AGENCY_ID = /^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$/;
export const BULLETIN_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
export const KID = /^(sig|kem)-[0-9a-f]{32}$/;
export const B64 = /^[A-Za-z0-9+/]*={0,2}$/;
const JURISDICTION = /^[A-Z][A-Z0-9-]{1,15}$/;
const TOPICS = [
  "drug-trafficking", "arms-trafficking", "human-trafficking", "organized-crime",
  "border-incident", "migration", "early-warning", "lessons-learned",
];
const CLASSIFICATIONS = ["UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET"];
const TLPS = ["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"];
const HANDLING = ["H0", "H1", "H2", "H3"];
export const PRECEDENCES = ["FLASH", "IMMEDIATE", "PRIORITY", "ROUTINE"];
const MAX_TS = 2 ** 40;
export const MAX_RECIPIENTS = 10_000;
export const MAX_WRAPS = 500;
export const MAX_GROUPS = 64;
export const GROUP_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,47}$/;
export const GROUP_KID = /^gk-[0-9a-f]{32}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const MEDIA_TYPE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}$/;
const MAX_ATTACHMENTS = 32;
const MAX_ATTACHMENT_BYTES = 4 * 1024 ** 3;
const MIN_CHUNK = 64 * 1024;
const MAX_CHUNK = 1024 * 1024;

const bad = (where, why, code = "malformed") => {
  throw new WireError(code, `${where}: ${why}`);
};

function exactKeys(obj, where, required, optional = []) {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) bad(where, "not an object");
  for (const k of Object.keys(obj)) {
    if (!required.includes(k) && !optional.includes(k)) bad(`${where}.${k}`, "unknown field");
  }
  for (const k of required) if (!(k in obj)) bad(`${where}.${k}`, "missing");
}
const str = (v, where, re, max = Infinity, code) => {
  if (typeof v !== "string" || v.length > max || (re && !re.test(v))) bad(where, "bad value", code);
  return v;
};
const oneOf = (v, where, values, code = "malformed") => {
  if (!values.includes(v)) bad(where, "not an allowed value", code);
  return v;
};
const ts = (v, where) => {
  if (!Number.isSafeInteger(v) || v < 0 || v > MAX_TS) bad(where, "not a timestamp");
  return v;
};
const optTs = (v, where) => (v === undefined || v === null ? undefined : ts(v, where));
const int = (v, where, min, max) => {
  if (!Number.isSafeInteger(v) || v < min || v > max) bad(where, `not an integer in ${min}..${max}`);
  return v;
};
function list(v, where, each, { min = 0, max = Infinity, unique = false } = {}) {
  if (!Array.isArray(v) || v.length < min || v.length > max) bad(where, `needs ${min}..${max} items`);
  v.forEach((x, k) => each(x, `${where}[${k}]`));
  if (unique && new Set(v).size !== v.length) bad(where, "values must be unique");
  return [...v];
}
const version = (v, where) => {
  if (v !== 1) bad(where, "unsupported version", "unsupported_version");
};

/** Labels in normal form: every default written, absent optional fields left out. */
export function labels(l, where = "labels") {
  const u = "unknown_label";
  exactKeys(l, where, ["topic", "classification", "tlp", "rel_to"], [
    "handling", "handling_note", "precedence", "source_grade", "named", "judicial_consent",
  ]);
  const out = {
    topic: oneOf(l.topic, `${where}.topic`, TOPICS, u),
    classification: oneOf(l.classification, `${where}.classification`, CLASSIFICATIONS, u),
    tlp: oneOf(l.tlp, `${where}.tlp`, TLPS, u),
    rel_to: list(l.rel_to, `${where}.rel_to`, (x, w) => str(x, w, JURISDICTION, 16, u), { min: 1, max: 64, unique: true }),
    handling: list(l.handling ?? [], `${where}.handling`, (x, w) => oneOf(x, w, HANDLING, u), { max: 4, unique: true }),
    precedence: oneOf(l.precedence ?? "ROUTINE", `${where}.precedence`, PRECEDENCES, u),
    named: list(l.named ?? [], `${where}.named`, (x, w) => str(x, w, AGENCY_ID, 32, u), { max: 64, unique: true }),
    judicial_consent: list(l.judicial_consent ?? [], `${where}.judicial_consent`, (x, w) => str(x, w, AGENCY_ID, 32, u), { max: 64, unique: true }),
  };
  if (l.handling_note != null) out.handling_note = str(l.handling_note, `${where}.handling_note`, /^[\s\S]{1,500}$/u, 500, u);
  if (l.source_grade != null) out.source_grade = str(l.source_grade, `${where}.source_grade`, /^[A-F][1-6]$/, 2, u);
  return out;
}

/** Group epochs a header addresses as a whole (envelope.md, ADR 37), sorted by group. */
export function audience(a, where) {
  const out = list(a, where, (x, k) => {
    exactKeys(x, k, ["group", "epoch", "member_count", "members_digest"]);
    str(x.group, `${k}.group`, GROUP_NAME);
    int(x.epoch, `${k}.epoch`, 1, MAX_TS);
    int(x.member_count, `${k}.member_count`, 1, MAX_RECIPIENTS);
    str(x.members_digest, `${k}.members_digest`, HEX64);
  }, { min: 1, max: MAX_GROUPS }).map((x) => ({ group: x.group, epoch: x.epoch, member_count: x.member_count, members_digest: x.members_digest }));
  const names = out.map((x) => x.group);
  if ([...new Set(names)].sort().join(",") !== names.join(",")) bad(where, "audience must be sorted by group and name each once");
  return out;
}

/** The header in normal form (what is signed and digested). */
export function header(h) {
  const w = "envelope.header";
  exactKeys(h, w, ["v", "bulletin_id", "originator", "created_at", "labels", "recipients", "aead", "key_commitment", "signer"],
    ["not_before", "expires_at", "supersedes", "in_reply_to", "thread", "reply_all", "rfi_due", "forward_of", "attachments", "audience"]);
  version(h.v, `${w}.v`);
  const out = {
    v: 1,
    bulletin_id: str(h.bulletin_id, `${w}.bulletin_id`, BULLETIN_ID),
    originator: str(h.originator, `${w}.originator`, AGENCY_ID),
    created_at: ts(h.created_at, `${w}.created_at`),
    labels: labels(h.labels, `${w}.labels`),
    recipients: list(h.recipients, `${w}.recipients`, (x, k) => str(x, k, AGENCY_ID), { max: MAX_RECIPIENTS }),
    aead: oneOf(h.aead, `${w}.aead`, ["AES-256-GCM"], "unsupported_suite"),
    key_commitment: str(h.key_commitment, `${w}.key_commitment`, B64, 2_000_000),
    signer: str(h.signer, `${w}.signer`, KID),
  };
  const sorted = [...new Set(out.recipients)].sort();
  if (sorted.join(",") !== out.recipients.join(",")) bad(`${w}.recipients`, "must be sorted and unique");
  if (h.audience != null) out.audience = audience(h.audience, `${w}.audience`);
  if (out.recipients.length === 0 && out.audience === undefined) bad(`${w}.recipients`, "a bulletin needs at least one recipient");
  for (const k of ["not_before", "expires_at"]) {
    const t = optTs(h[k], `${w}.${k}`);
    if (t !== undefined) out[k] = t;
  }
  if (h.supersedes != null) out.supersedes = str(h.supersedes, `${w}.supersedes`, BULLETIN_ID);
  // Replies and requests for information (conversations in envelope.md).
  for (const k of ["in_reply_to", "thread"]) if (h[k] != null) out[k] = str(h[k], `${w}.${k}`, BULLETIN_ID);
  if (h.reply_all != null) {
    if (h.reply_all !== true) bad(`${w}.reply_all`, "only true, or left out");
    out.reply_all = true;
  }
  if (h.rfi_due != null) out.rfi_due = ts(h.rfi_due, `${w}.rfi_due`);
  if (h.forward_of != null) out.forward_of = citation(h.forward_of, `${w}.forward_of`);
  if (h.attachments != null) {
    out.attachments = list(h.attachments, `${w}.attachments`, (x, k) => attachmentRef(x, k), { min: 1, max: MAX_ATTACHMENTS })
      .map((x) => ({ size: x.size, chunk_size: x.chunk_size, chunks: x.chunks, digest: x.digest }));
  }
  if ((out.in_reply_to === undefined) !== (out.thread === undefined)) bad(w, "a reply names both the bulletin it answers and its thread");
  if (out.in_reply_to === out.bulletin_id || out.thread === out.bulletin_id) bad(w, "a bulletin cannot answer itself");
  if (out.rfi_due !== undefined && out.rfi_due <= out.created_at) bad(w, "rfi_due must be after created_at");
  if (out.expires_at !== undefined && out.expires_at <= out.created_at) bad(w, "expires_at must be after created_at");
  if (out.not_before !== undefined && out.expires_at !== undefined && out.not_before >= out.expires_at) {
    bad(w, "not_before must be before expires_at");
  }
  if (out.supersedes === out.bulletin_id) bad(w, "a bulletin cannot supersede itself");
  if (out.forward_of !== undefined && out.forward_of.bulletin_id === out.bulletin_id) bad(w, "a bulletin cannot forward itself");
  return out;
}

/** A forward's citation (forwarding.md) in normal form: the grant left out when absent. */
export function citation(c, where = "forward_of") {
  exactKeys(c, where, ["bulletin_id", "originator", "envelope_digest"], ["grant"]);
  const out = {
    bulletin_id: str(c.bulletin_id, `${where}.bulletin_id`, BULLETIN_ID),
    originator: str(c.originator, `${where}.originator`, AGENCY_ID),
    envelope_digest: str(c.envelope_digest, `${where}.envelope_digest`, HEX64),
  };
  if (c.grant != null) out.grant = forwardGrant(c.grant, `${where}.grant`);
  return out;
}

export const MAX_GRANT_S = 30 * 86400;

/** The originator's signed consent to one forward (forwarding.md): every field required. */
export function forwardGrant(g, where = "grant") {
  exactKeys(g, where, ["v", "bulletin_id", "originator", "forwarder", "recipient", "issued_at", "expires_at", "kid", "sig"]);
  version(g.v, `${where}.v`);
  const out = {
    v: 1,
    bulletin_id: str(g.bulletin_id, `${where}.bulletin_id`, BULLETIN_ID),
    originator: str(g.originator, `${where}.originator`, AGENCY_ID),
    forwarder: str(g.forwarder, `${where}.forwarder`, AGENCY_ID),
    recipient: str(g.recipient, `${where}.recipient`, AGENCY_ID),
    issued_at: ts(g.issued_at, `${where}.issued_at`),
    expires_at: ts(g.expires_at, `${where}.expires_at`),
    kid: str(g.kid, `${where}.kid`, KID),
    sig: str(g.sig, `${where}.sig`, B64, 128),
  };
  if (!(out.issued_at < out.expires_at && out.expires_at <= out.issued_at + MAX_GRANT_S)) bad(where, "expires_at must be within 30 days after issued_at");
  if (new Set([out.originator, out.forwarder, out.recipient]).size !== 3) bad(where, "originator, forwarder and recipient must differ");
  return out;
}

/** What the signed header says of one attachment (attachments.md). */
export function attachmentRef(x, where) {
  exactKeys(x, where, ["size", "chunk_size", "chunks", "digest"]);
  int(x.size, `${where}.size`, 0, MAX_ATTACHMENT_BYTES);
  int(x.chunk_size, `${where}.chunk_size`, MIN_CHUNK, MAX_CHUNK);
  int(x.chunks, `${where}.chunks`, 1, MAX_ATTACHMENT_BYTES / MIN_CHUNK + 1);
  str(x.digest, `${where}.digest`, HEX64);
  if (x.chunks !== Math.max(1, Math.ceil(x.size / x.chunk_size))) bad(where, "chunks does not match size and chunk_size");
  return x;
}

/** A parsed envelope, checked, in normal form. */
export function envelope(e) {
  exactKeys(e, "envelope", ["v", "header", "body", "wraps", "sig"], ["groups"]);
  version(e.v, "envelope.v");
  const h = header(e.header);
  exactKeys(e.body, "envelope.body", ["nonce", "ct"]);
  const body = { nonce: str(e.body.nonce, "envelope.body.nonce", B64, 2_000_000), ct: str(e.body.ct, "envelope.body.ct", B64, 2_000_000) };
  const wraps = list(e.wraps, "envelope.wraps", (x, w) => {
    exactKeys(x, w, ["recipient", "kid", "kem", "enc"]);
    str(x.recipient, `${w}.recipient`, AGENCY_ID);
    str(x.kid, `${w}.kid`, KID);
    oneOf(x.kem, `${w}.kem`, ["MLKEM768-X25519", "X25519"], "unsupported_suite");
    str(x.enc, `${w}.enc`, B64, 2_000_000);
  }, { max: MAX_WRAPS }).map((x) => ({ recipient: x.recipient, kid: x.kid, kem: x.kem, enc: x.enc }));
  let groups;
  if (e.groups != null) {
    groups = list(e.groups, "envelope.groups", (x, w) => {
      exactKeys(x, w, ["group", "epoch", "kid", "nonce", "ct"]);
      str(x.group, `${w}.group`, GROUP_NAME);
      int(x.epoch, `${w}.epoch`, 1, MAX_TS);
      str(x.kid, `${w}.kid`, GROUP_KID);
      str(x.nonce, `${w}.nonce`, B64, 2_000_000);
      str(x.ct, `${w}.ct`, B64, 2_000_000);
    }, { min: 1, max: MAX_GROUPS }).map((x) => ({ group: x.group, epoch: x.epoch, kid: x.kid, nonce: x.nonce, ct: x.ct }));
  }
  exactKeys(e.sig, "envelope.sig", ["alg", "kid", "value"]);
  oneOf(e.sig.alg, "envelope.sig.alg", ["Ed25519"], "unsupported_suite");
  const sig = { alg: "Ed25519", kid: str(e.sig.kid, "envelope.sig.kid", KID), value: str(e.sig.value, "envelope.sig.value", B64, 2_000_000) };
  const wrapped = wraps.map((x) => x.recipient);
  if (h.audience !== undefined) {
    // A wrap for each named recipient, a group wrap for each epoch of the audience.
    if (wrapped.join(",") !== h.recipients.join(",")) bad("envelope", "wrap list does not match the signed recipients");
    const used = (groups ?? []).map((g) => `${g.group}@${g.epoch}`).join(",");
    if (used !== h.audience.map((a) => `${a.group}@${a.epoch}`).join(",")) bad("envelope", "group wraps must be one for each epoch of the audience");
  } else if (groups === undefined) {
    if (wrapped.length === 0) bad("envelope.wraps", "a bulletin without group wraps needs one per recipient");
    if (wrapped.join(",") !== h.recipients.join(",")) bad("envelope", "wrap list does not match the signed recipients");
  } else {
    const sorted = [...new Set(wrapped)].sort();
    const addressed = new Set(h.recipients);
    if (sorted.join(",") !== wrapped.join(",") || !wrapped.every((r) => addressed.has(r))) {
      bad("envelope", "wrap list is not a sorted part of the signed recipients");
    }
    const names = groups.map((g) => g.group);
    if ([...new Set(names)].sort().join(",") !== names.join(",")) bad("envelope", "group wraps must be sorted by group and name each once");
  }
  if (sig.kid !== h.signer) bad("envelope", "signature key differs from the header's signer");
  return groups === undefined ? { v: 1, header: h, body, wraps, sig } : { v: 1, header: h, body, wraps, groups, sig };
}

/** A plain file name: no folders, no control character, not . or .., no surrounding spaces. */
export function fileName(name, where) {
  if (typeof name !== "string" || name.length === 0 || [...name].length > 255 || /[\x00-\x1f\x7f/\\]/.test(name)) bad(where, "not a plain file name");
  if (name === "." || name === ".." || name !== name.trim()) bad(where, "not a plain file name");
  return name;
}

/** The plaintext inside the body. */
export function innerBulletin(x) {
  const w = "inner bulletin";
  exactKeys(x, w, ["bulletin_id", "originator", "recipients", "content"], ["audience"]);
  exactKeys(x.content, `${w}.content`, ["title", "text"], ["attachments", "acknowledges"]);
  if (x.content.acknowledges != null && x.content.acknowledges !== true) bad(`${w}.content.acknowledges`, "only true, or left out");
  const title = x.content.title;
  if (typeof title !== "string" || title.length < 1 || [...title].length > 300) bad(`${w}.content.title`, "bad value");
  if (typeof x.content.text !== "string" || [...x.content.text].length > 512 * 1024) bad(`${w}.content.text`, "bad value");
  const out = {
    bulletin_id: str(x.bulletin_id, `${w}.bulletin_id`, BULLETIN_ID),
    originator: str(x.originator, `${w}.originator`, AGENCY_ID),
    recipients: list(x.recipients, `${w}.recipients`, (r, k) => str(r, k, AGENCY_ID), { max: MAX_RECIPIENTS }),
    content: { title, text: x.content.text },
  };
  if (x.audience != null) out.audience = audience(x.audience, `${w}.audience`);
  if (out.recipients.length === 0 && out.audience === undefined) bad(`${w}.recipients`, "a bulletin needs at least one recipient");
  if (x.content.attachments != null) {
    out.content.attachments = list(x.content.attachments, `${w}.content.attachments`, (a, k) => {
      exactKeys(a, k, ["name"], ["media_type"]);
      fileName(a.name, `${k}.name`);
      str(a.media_type ?? "application/octet-stream", `${k}.media_type`, MEDIA_TYPE);
    }, { min: 1, max: MAX_ATTACHMENTS }).map((a) => ({ name: a.name, media_type: a.media_type ?? "application/octet-stream" }));
  }
  if (x.content.acknowledges === true) out.content.acknowledges = true; // a person read and acted on it (ADR 27)
  return out;
}
