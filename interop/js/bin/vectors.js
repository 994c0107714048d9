#!/usr/bin/env node
// Check docs/spec/vectors/*.json with this implementation alone. Prints one line per
// group and exits 1 on the first group that fails.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { WireError, b64d, b64e, canonicalText, concat, dec, enc, hex, strictParse, unhex } from "../src/canonical.js";
import { documentSigningInput, signReceipt, verifyDirectoryAnswer, verifyDocument } from "../src/documents.js";
import { gcm } from "@noble/ciphers/aes.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { shake256 } from "@noble/hashes/sha3.js";
import * as att from "../src/attachments.js";
import * as env from "../src/envelope.js";
import * as fwd from "../src/forwarding.js";
import * as groups from "../src/groups.js";
import * as hpke from "../src/hpke.js";
import { encryptionKid, encryptionPublic, sign, signingKid, verifyKeyOf } from "../src/keys.js";
import * as model from "../src/model.js";
import * as subjects from "../src/subjects.js";

const here = dirname(fileURLToPath(import.meta.url));
const dir = process.argv[2] ?? join(here, "..", "..", "..", "docs", "spec", "vectors");
const load = (name) => JSON.parse(readFileSync(join(dir, name), "utf8"));
let failures = 0;
let checks = 0;

function eq(actual, expected, what) {
  checks++;
  if (actual !== expected) {
    failures++;
    console.error(`FAIL ${what}:\n  got      ${String(actual).slice(0, 200)}\n  expected ${String(expected).slice(0, 200)}`);
  }
}
function throws(fn, what, code) {
  checks++;
  try {
    fn();
  } catch (e) {
    if (code && e.code !== code) {
      failures++;
      console.error(`FAIL ${what}: failed with ${e.code} (${e.message}), expected ${code}`);
    }
    return;
  }
  failures++;
  console.error(`FAIL ${what}: accepted`);
}
function group(name, fn) {
  const before = failures;
  try {
    fn();
  } catch (e) {
    failures++;
    console.error(`FAIL ${name}: ${e.code ?? e.name}: ${e.message}`);
  }
  console.log(`${failures === before ? "ok  " : "FAIL"} ${name}`);
}

const keys = load("keys.json");
const byAgency = Object.fromEntries(keys.agencies.map((a) => [a.agency, a]));
const keyring = (agency) => {
  const e = byAgency[agency].encryption;
  return { [e.kid]: { kem: e.kem, private: b64d(e.private, "private", 96) } };
};
const signingPublic = (agency) => b64d(byAgency[agency].signing.public, "public", 32);
// The vectors' signed directory: each agency's one signing key, never revoked.
const grantKey = (agency, kid) => (byAgency[agency]?.signing.kid === kid ? { public: signingPublic(agency), revoked_at: null } : null);

group("keys.json: public keys and key ids from the private keys", () => {
  for (const a of keys.agencies) {
    const seed = b64d(a.signing.private, "private", 32);
    eq(b64e(verifyKeyOf(seed)), a.signing.public, `${a.agency} Ed25519 public`);
    eq(signingKid(verifyKeyOf(seed)), a.signing.kid, `${a.agency} signing kid`);
    const pub = encryptionPublic(a.encryption.kem, b64d(a.encryption.private, "private", 96));
    eq(b64e(pub), a.encryption.public, `${a.agency} ${a.encryption.kem} public`);
    eq(encryptionKid(a.encryption.kem, pub), a.encryption.kid, `${a.agency} encryption kid`);
  }
  const dk = keys.directory_key;
  eq(signingKid(verifyKeyOf(b64d(dk.private, "private", 32))), dk.kid, "directory kid");
});

group("canonical.json: encoding, strict parsing, base64", () => {
  const c = load("canonical.json");
  for (const [k, v] of c.encode.entries()) {
    eq(canonicalText(v.value), v.canonical, `encode[${k}]`);
    eq(hex(enc(canonicalText(v.value))), v.canonical_hex, `encode[${k}] bytes`);
    eq(canonicalText(strictParse(unhex(v.canonical_hex), 1 << 20)), v.canonical, `parse[${k}]`);
  }
  for (const r of c.reject) throws(() => strictParse(unhex(r.raw_hex), 1 << 20), `reject ${r.why}`, "malformed");
  for (const b of c.base64_accept) eq(hex(b64d(b.text, "v", 64)), b.hex, `base64 ${b.text}`);
  for (const b of c.base64_reject) throws(() => b64d(b.text, "v", 64), `base64 reject ${b.why}`);
});

group("subjects.json: subjects and names", () => {
  const s = load("subjects.json");
  const a = s.agency;
  for (const good of s.agency_ids_valid) eq(subjects.checked(good), good, `agency id ${good}`);
  for (const b of s.agency_ids_invalid) throws(() => subjects.checked(b), `agency id ${b}`, "bad_agency_id");
  eq(subjects.ingest(a), s.ingest, "ingest");
  eq(subjects.receipt(a), s.receipt, "receipt");
  for (const [op, subj] of Object.entries(s.api)) eq(subjects.api(a, op), subj, `api ${op}`);
  eq(Object.keys(s.api).join(","), subjects.API_OPS.join(","), "api ops");
  for (const [op, subj] of Object.entries(s.attachments)) eq(subjects.attach(a, op), subj, `att ${op}`);
  eq(Object.keys(s.attachments).join(","), subjects.ATTACH_OPS.join(","), "att ops");
  eq(subjects.ANNOUNCE, s.announce, "announce");
  eq(subjects.inboxPrefix(a), s.inbox_prefix, "inbox prefix");
  eq(subjects.accountName(a), s.account, "account");
  for (const [p, subj] of Object.entries(s.deliver)) eq(subjects.deliver(a, p), subj, `deliver ${p}`);
  const ds = subjects.durables(a);
  s.consumers.forEach((c, k) => {
    eq(ds[k], c.durable, `durable ${k}`);
    eq(subjects.filterSubjects(c.durable).join(" "), c.filter_subjects.join(" "), `filters ${c.durable}`);
    eq(subjects.pullSubject(c.durable), c.pull, `pull ${c.durable}`);
    eq(subjects.ackSubjects(c.durable), c.acks, `acks ${c.durable}`);
  });
});

const envs = load("envelopes.json");
group("envelopes.json: digests, signing input, HPKE step by step, opening", () => {
  for (const c of envs.cases) {
    const raw = enc(c.envelope);
    const e = env.parseEnvelope(raw);
    eq(dec(env.encodeEnvelope(e)), c.envelope, `${c.name}: canonical re-encoding`);
    eq(env.envelopeDigest(e), c.envelope_sha256, `${c.name}: envelope digest`);
    eq(subjects.ingestMsgId(c.originator, env.envelopeDigest(e)), c.ingest_msg_id, `${c.name}: msg id`);
    eq(canonicalText(e.header), c.header_canonical, `${c.name}: header`);
    eq(hex(env.headerDigest(e.header)), c.header_digest_hex, `${c.name}: header digest`);
    eq(env.bodyDigest(e.body), c.body_digest, `${c.name}: body digest`);
    const si = env.signingInput(e);
    eq(dec(si.slice("istmo/v1/envelope\0".length)), c.signed_json, `${c.name}: signed JSON`);
    eq(hex(env.commitment(unhex(c.content_key_hex))), c.key_commitment_hex, `${c.name}: commitment`);
    env.verifyEnvelope(e, signingPublic(c.originator));
    for (const w of c.wraps) {
      const wrap = e.wraps.find((x) => x.recipient === w.recipient);
      const info = env.wrapInfo(env.headerDigest(e.header), w.recipient, wrap.kid);
      eq(hex(info), w.info_hex, `${c.name}/${w.recipient}: info`);
      const priv = Object.values(keyring(w.recipient))[0].private;
      const t = hpke.openTraced(w.kem, priv, b64d(wrap.enc, "enc", 4096), info);
      eq(hex(t.suiteId), w.suite_id_hex, `${c.name}/${w.recipient}: suite id`);
      eq(t.enc.length, w.enc_bytes, `${c.name}/${w.recipient}: enc length`);
      for (const [k, v] of Object.entries(t.inner)) eq(hex(v), w[`${k}_hex`], `${c.name}/${w.recipient}: ${k}`);
      eq(hex(t.sharedSecret), w.shared_secret_hex, `${c.name}/${w.recipient}: shared secret`);
      eq(hex(t.key), w.key_hex, `${c.name}/${w.recipient}: key`);
      eq(hex(t.baseNonce), w.base_nonce_hex, `${c.name}/${w.recipient}: base nonce`);
      eq(hex(t.plaintext), c.content_key_hex, `${c.name}/${w.recipient}: content key`);
      const { inner, forwarded } = env.openEnvelopeKeyed(e, { recipient: w.recipient, keys: keyring(w.recipient), senderPublic: signingPublic(c.originator), grantKey });
      eq(canonicalText(inner), c.inner_plaintext, `${c.name}/${w.recipient}: inner bulletin`);
      eq(forwarded?.forwarded_by ?? null, e.header.forward_of ? c.originator : null, `${c.name}/${w.recipient}: forwarded by`);
    }
    for (const g of c.group_wraps ?? []) {
      const gw = e.groups.find((x) => x.group === g.group);
      const hd = env.headerDigest(e.header);
      eq(hex(groups.groupContentAad(hd, gw.group, gw.epoch)), g.aad_hex, `${c.name}/${g.group}: group wrap aad`);
      const epochKey = { group: g.group, epoch: g.epoch, kid: g.kid, key: unhex(g.epoch_key_hex) };
      eq(hex(groups.openGroupWrap(gw, epochKey, hd)), c.content_key_hex, `${c.name}/${g.group}: content key`);
      for (const r of c.covered) {
        const { inner, contentKey } = env.openEnvelopeKeyed(e, { recipient: r, keys: keyring(r), senderPublic: signingPublic(c.originator), epochKeys: [epochKey] });
        eq(hex(contentKey), c.content_key_hex, `${c.name}/${r}: content key by the group`);
        eq(canonicalText(inner), c.inner_plaintext, `${c.name}/${r}: inner bulletin by the group`);
      }
    }
    if (e.header.audience) {
      // The epoch addressed whole (ADR 37): its members, less the originator, open it by
      // the group wrap; the header names their count and digest, not them.
      const g = load("groups.json");
      const [a] = e.header.audience;
      eq(`${a.member_count} ${a.members_digest}`, `${g.members.length} ${groups.membersDigest(g.members)}`, `${c.name}: the audience names the epoch's members`);
      eq(c.covered.join(","), g.members.filter((m) => m !== c.originator).join(","), `${c.name}: every member but the originator opens it`);
      eq(c.wraps.length, e.header.recipients.length, `${c.name}: a wrap for each named recipient`);
    } else {
      eq((c.covered ?? []).length + c.wraps.length, e.header.recipients.length, `${c.name}: every recipient opens it`);
    }
  }
  for (const f of envs.failures) {
    const code = { signature: "signature", parse: "malformed" }[f.fails] ?? f.fails;
    const epochKeys = (f.epoch_keys ?? []).map((k) => ({ group: k.group, epoch: k.epoch, kid: k.kid, key: unhex(k.key_hex) }));
    throws(
      () => {
        const e = env.parseEnvelope(enc(f.envelope));
        env.openEnvelope(e, { recipient: f.open_as, keys: keyring(f.open_as), senderPublic: signingPublic(e.header.originator), epochKeys, grantKey });
      },
      `failure: ${f.why}`,
      code,
    );
  }
});

group("envelopes: sealed here, opened here, and the same wraps re-derived", () => {
  const c = envs.cases[0];
  const e = env.parseEnvelope(enc(c.envelope));
  const inner = JSON.parse(c.inner_plaintext);
  const recipients = Object.fromEntries(e.header.recipients.map((r) => [r, { kem: byAgency[r].encryption.kem, public: b64d(byAgency[r].encryption.public, "p", 1216) }]));
  const sealed = env.sealEnvelope({
    content: inner.content, labels: e.header.labels, originator: "gt-police",
    signingSeed: b64d(byAgency["gt-police"].signing.private, "s", 32), signingPublic: signingPublic("gt-police"),
    recipients, now: e.header.created_at, expiresAt: e.header.expires_at,
  });
  const again = env.parseEnvelope(env.encodeEnvelope(sealed));
  for (const r of again.header.recipients) {
    const got = env.openEnvelope(again, { recipient: r, keys: keyring(r), senderPublic: signingPublic("gt-police") });
    eq(canonicalText(got.content), canonicalText(inner.content), `sealed for ${r}`);
  }
});

group("groups.json: an epoch's key id, members, signed statement and member wraps", () => {
  const g = load("groups.json");
  const key = unhex(g.epoch_key_hex);
  const commitment = groups.epochCommitment(key);
  eq(hex(commitment), g.key_commitment_hex, "epoch key commitment");
  eq(groups.groupKid(commitment), g.kid, "epoch key id");
  eq(dec(groups.membersDigestInput(g.members)), g.members_digest_input, "members digest input");
  eq(groups.membersDigest(g.members), g.members_digest, "members digest");
  const signed = strictParse(enc(g.signed_epoch), 1 << 16);
  eq(canonicalText(signed.statement), g.statement, "statement");
  eq(dec(groups.epochSigningInput(signed.statement)), g.signing_input, "statement signing input");
  const st = groups.verifyEpoch(signed, signingPublic(g.manager));
  eq(st.key_commitment, b64e(commitment), "statement commits to the key");
  eq(st.members_digest, g.members_digest, "statement signs the members");
  eq(b64e(sign(b64d(byAgency[g.manager].signing.private, "s", 32), groups.epochSigningInput(st))), signed.sig, "manager's signature");
  throws(() => groups.verifyEpoch(signed, signingPublic("gt-police")), "epoch signed by another key", "key_not_bound_to_sender");
  for (const m of g.member_wraps) {
    const wrap = strictParse(enc(m.wrap), 1 << 16);
    eq(hex(groups.memberWrapInfo(st, m.agency, wrap.kid)), m.info_hex, `${m.agency}: member wrap info`);
    const priv = Object.values(keyring(m.agency))[0].private;
    const t = hpke.openTraced(wrap.kem, priv, b64d(wrap.enc, "enc", 4096), groups.memberWrapInfo(st, m.agency, wrap.kid));
    eq(hex(t.suiteId), m.suite_id_hex, `${m.agency}: suite id`);
    for (const [k, v] of Object.entries(t.inner)) eq(hex(v), m[`${k}_hex`], `${m.agency}: ${k}`);
    eq(hex(t.sharedSecret), m.shared_secret_hex, `${m.agency}: shared secret`);
    eq(hex(t.key), m.key_hex, `${m.agency}: key`);
    eq(hex(t.baseNonce), m.base_nonce_hex, `${m.agency}: base nonce`);
    const got = groups.unwrapEpochKey(st, wrap, m.agency, keyring(m.agency));
    eq(hex(got.key), g.epoch_key_hex, `${m.agency}: epoch key`);
    throws(() => groups.unwrapEpochKey(st, wrap, "hn-police", keyring("hn-police")), `${m.agency}'s wrap for hn-police`, "recipient_key_unknown");
  }
  eq(groups.groupKid(groups.epochCommitment(unhex(g.other_epoch.epoch_key_hex))), g.other_epoch.kid, "previous epoch's key id");
});

group("attachments.json: keys, chunks, nonces, digests; refusals", () => {
  const a = load("attachments.json");
  const c = envs.cases.find((x) => x.name === a.envelope_case);
  const e = env.parseEnvelope(enc(c.envelope));
  const { inner, contentKey } = env.openEnvelopeKeyed(e, { recipient: "rc-drugs", keys: keyring("rc-drugs"), senderPublic: signingPublic(c.originator) });
  eq(hex(contentKey), a.content_key_hex, "content key");
  const bid = e.header.bulletin_id;
  eq(bid, a.bulletin_id, "bulletin id");
  for (const f of a.files) {
    const ref = e.header.attachments[f.index];
    const meta = inner.content.attachments[f.index];
    eq(`${meta.name} ${meta.media_type}`, `${f.name} ${f.media_type}`, `file ${f.index}: name and type, inside the body`);
    eq(`${ref.size} ${ref.chunk_size} ${ref.chunks}`, `${f.size} ${f.chunk_size} ${f.chunks.length}`, `file ${f.index}: signed sizes`);
    eq(hex(att.keyInfo(bid, f.index)), f.key_info_hex, `file ${f.index}: key info`);
    const key = att.attachmentKey(contentKey, bid, f.index);
    eq(hex(key), f.key_hex, `file ${f.index}: key`);
    const plain = shake256(enc(`istmo spec vectors\0${f.plaintext_label}`), { dkLen: f.size });
    eq(hex(sha256(plain)), f.plaintext_sha256, `file ${f.index}: plaintext`);
    const digest = new att.ChunkDigest(f.index, ref.chunks);
    const opened = [];
    for (const ch of f.chunks) {
      const last = ch.chunk === ref.chunks - 1;
      eq(last, ch.last, `file ${f.index}/${ch.chunk}: last flag`);
      eq(hex(att.chunkNonce(ch.chunk, last)), ch.nonce_hex, `file ${f.index}/${ch.chunk}: nonce`);
      eq(hex(att.chunkAad(bid, f.index, ch.chunk, last)), ch.aad_hex, `file ${f.index}/${ch.chunk}: aad`);
      const ct = b64d(ch.ct, "ct", 2 * 1024 * 1024);
      eq(ct.length, att.plainSize(ref, ch.chunk) + att.TAG_BYTES, `file ${f.index}/${ch.chunk}: signed length`);
      eq(hex(sha256(ct)), ch.ct_sha256, `file ${f.index}/${ch.chunk}: ciphertext hash`);
      const piece = att.openChunk(key, bid, f.index, ch.chunk, ct, last);
      eq(piece.length, ch.plain_bytes, `file ${f.index}/${ch.chunk}: plaintext length`);
      const from = ch.chunk * ref.chunk_size;
      eq(hex(att.sealChunk(key, bid, f.index, ch.chunk, plain.slice(from, from + piece.length), last)), hex(ct), `file ${f.index}/${ch.chunk}: sealed again`);
      opened.push(piece);
      digest.add(sha256(ct));
    }
    eq(hex(digest.input()), f.digest_input_hex, `file ${f.index}: digest input`);
    eq(digest.hexdigest(), ref.digest, `file ${f.index}: signed digest`);
    eq(hex(sha256(concat(...opened))), f.plaintext_sha256, `file ${f.index}: opened file`);
  }
  for (const x of a.failures) {
    const key = unhex(a.files[x.key_of].key_hex);
    const ct = b64d(a.files[x.ct_of[0]].chunks[x.ct_of[1]].ct, "ct", 2 * 1024 * 1024);
    throws(() => att.openChunk(key, bid, x.open_as.attachment, x.open_as.chunk, ct, x.open_as.last), `chunk refused: ${x.why}`, x.fails);
  }
  for (const [k, x] of a.exchanges.entries()) {
    eq(subjects.attach(x.caller, x.op), x.subject, `att exchange ${k} subject`);
    if (x.request) eq(canonicalText(strictParse(enc(x.request), 1024)), x.request, `att exchange ${k} request`);
    if (x.headers) eq(canonicalText(strictParse(enc(x.headers[att.CHUNK_HEADER]), 1024)), x.headers[att.CHUNK_HEADER], `att exchange ${k} chunk header`);
    if (x.reply) eq(canonicalText(strictParse(enc(x.reply), 1024)), x.reply, `att exchange ${k} reply`);
    if (x.reply_headers) eq(x.reply_headers["Istmo-Kind"], att.CHUNK_KIND, `att exchange ${k} reply kind`);
  }
});

group("forwarding.json: the grant, its signing input, the citation, the request id; refusals", () => {
  const f = load("forwarding.json");
  const original = envs.cases.find((x) => x.name === f.original_case);
  const c = envs.cases.find((x) => x.name === f.forward_case);
  const e = env.parseEnvelope(enc(c.envelope));
  const o = env.parseEnvelope(enc(original.envelope));
  const cite = e.header.forward_of;
  eq(canonicalText(cite), f.citation, "citation as the header carries it");
  eq(cite.bulletin_id, o.header.bulletin_id, "cites the original's id");
  eq(cite.originator, o.header.originator, "cites the original's originator");
  eq(cite.envelope_digest, env.envelopeDigest(o), "cites the original envelope's digest");
  eq(env.envelopeDigest(o), f.original.envelope_sha256, "original envelope digest");
  eq(`${c.originator} ${e.header.recipients.join(",")}`, `${f.forwarder} ${f.recipient}`, "forwarder and its one recipient");
  const g = model.forwardGrant(strictParse(enc(f.grant.message), 4096));
  eq(canonicalText(g), canonicalText(cite.grant), "the grant in the citation");
  eq(dec(fwd.grantSigningInput(g)), f.grant.signing_input, "grant signing input");
  const seed = b64d(byAgency[f.grant.signer].signing.private, "s", 32);
  const made = fwd.signGrant({ bulletin_id: g.bulletin_id, originator: g.originator, forwarder: g.forwarder, recipient: g.recipient, issued_at: g.issued_at, expires_at: g.expires_at }, seed, signingPublic(f.grant.signer));
  eq(canonicalText(made), f.grant.message, "grant signed here, byte for byte");
  eq(fwd.checkConsent(e.header, f.recipient, grantKey), f.consent, "consent the recipient checked");
  throws(() => fwd.checkConsent(e.header, f.recipient, null), "a grant without the originator's key", "forward_consent_invalid");
  throws(() => fwd.checkConsent(e.header, "sv-police", grantKey), "the grant checked by another agency", "forward_consent_invalid");
  const { grant: _g, ...byPolicy } = cite;
  eq(fwd.checkConsent({ ...e.header, forward_of: byPolicy }, f.recipient, grantKey), "policy", "a citation without a grant: the policy's consent");
  eq(hex(fwd.requestIdInput(cite.bulletin_id, f.forwarder, f.recipient)), f.request_id_input_hex, "request id input");
  eq(fwd.requestId(cite.bulletin_id, f.forwarder, f.recipient), f.request_id, "request id");
  for (const x of f.failures) {
    const header = { ...e.header, originator: x.forwarder, forward_of: model.citation(strictParse(enc(x.citation), 4096)) };
    throws(() => fwd.checkConsent(header, x.open_as, grantKey), `refused: ${x.why}`, x.fails);
  }
  throws(() => model.forwardGrant({ ...g, expires_at: g.issued_at + model.MAX_GRANT_S + 1 }), "a grant over 30 days", "malformed");
  throws(() => model.forwardGrant({ ...g, recipient: g.forwarder }), "a grant to the forwarder itself", "malformed");
  throws(() => model.citation({ ...cite, note: "x" }), "a citation with an unknown field", "malformed");
});

group("signed-documents.json: receipt and withdrawal, signed byte for byte", () => {
  const d = load("signed-documents.json");
  const r = JSON.parse(d.receipt.message);
  const made = signReceipt({
    bulletinId: r.bulletin_id, originator: r.originator, recipient: r.recipient,
    envelopeDigest: r.envelope_digest, receivedAt: r.received_at,
    seed: b64d(byAgency[r.recipient].signing.private, "s", 32), publicKey: signingPublic(r.recipient),
  });
  eq(dec(documentSigningInput("receipt", made)), d.receipt.signing_input, "receipt signing input");
  eq(canonicalText(made), d.receipt.message, "receipt message");
  eq(subjects.receipt(r.recipient), d.receipt.subject, "receipt subject");
  eq(subjects.receiptMsgId(r.bulletin_id, r.recipient), d.receipt.nats_msg_id, "receipt msg id");
  const w = strictParse(enc(d.withdrawal.message), 4096);
  eq(dec(documentSigningInput("withdrawal", w)), d.withdrawal.signing_input, "withdrawal signing input");
  verifyDocument("withdrawal", w, signingPublic(w.originator));
  const seed = b64d(byAgency[w.originator].signing.private, "s", 32);
  eq(b64e(sign(seed, documentSigningInput("withdrawal", w))), w.sig, "withdrawal signature");
  throws(() => verifyDocument("receipt", { ...w, sig: w.sig }, signingPublic(w.originator)), "domain separation", "signature");
});

group("directory.json: answers signed by the directory key", () => {
  const d = load("directory.json");
  const pinned = { kid: keys.directory_key.kid, public: b64d(keys.directory_key.public, "p", 32) };
  const ex = verifyDirectoryAnswer(strictParse(enc(d.excerpt.message), 8 << 20), "directory", pinned);
  eq(`istmo/v1/directory\0${canonicalText(ex)}`, d.excerpt.signing_input, "excerpt signing input");
  const ch = verifyDirectoryAnswer(strictParse(enc(d.changes.message), 1 << 20), "directory-changes", pinned);
  eq(`istmo/v1/directory-changes\0${canonicalText(ch)}`, d.changes.signing_input, "changes signing input");
  const other = { kid: byAgency["gt-police"].signing.kid, public: signingPublic("gt-police") };
  throws(() => verifyDirectoryAnswer(strictParse(enc(d.excerpt.message), 8 << 20), "directory", other), "unpinned key", "directory_untrusted");
  for (const rec of ex.agencies) {
    eq(rec.encryption_key.public, byAgency[rec.id].encryption.public, `record ${rec.id}`);
  }
});

group("agency-api.json: requests and replies are canonical JSON", () => {
  const a = load("agency-api.json");
  for (const [k, x] of a.exchanges.entries()) {
    eq(subjects.api(x.caller, x.op), x.subject, `exchange ${k} subject`);
    eq(canonicalText(strictParse(enc(x.request), 1 << 16)), x.request, `exchange ${k} request`);
    const reply = strictParse(enc(x.reply), 8 << 20);
    eq(canonicalText(reply), x.reply, `exchange ${k} reply`);
    if (x.op.startsWith("forward-") && !reply.error) forwardExchange(k, x, strictParse(enc(x.request), 1 << 16), reply);
  }
  eq(canonicalText(strictParse(enc(a.announcement), 1024)), a.announcement, "announcement");
});

// A forwarding exchange (forwarding.md): request ids recomputed, grants verified.
function forwardExchange(k, x, request, reply) {
  const answers = x.op === "forward-requests" ? reply.requests : [reply];
  for (const a of answers) {
    if (a.request_id !== null) eq(a.request_id, fwd.requestId(a.bulletin_id, a.forwarder, a.recipient), `exchange ${k} request id`);
  }
  if (x.op === "forward-request") eq(`${reply.forwarder} ${reply.recipient}`, `${x.caller} ${request.to}`, `exchange ${k} forwarder and recipient`);
  for (const g of [request.grant, reply.grant]) {
    if (g == null) continue;
    const grant = model.forwardGrant(g);
    const header = { originator: grant.forwarder, forward_of: { bulletin_id: grant.bulletin_id, originator: grant.originator, envelope_digest: "0".repeat(64), grant } };
    eq(fwd.checkConsent(header, grant.recipient, grantKey), "originator", `exchange ${k} grant verifies`);
  }
}

console.log(`${checks} checks, ${failures} failed`);
process.exit(failures === 0 ? 0 : 1);
