// One agency on the broker's NATS (docs/spec/nats.md, agency-api.md): connect with its
// nkey (and user JWT in operator mode) and its inbox prefix, ask the agency API, pull its
// two delivery consumers, ack, and store bulletins and receipts through the gate.
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { sha256 } from "@noble/hashes/sha2.js";
import * as att from "./attachments.js";
import { connect, headers, jwtAuthenticator, nkeyAuthenticator, nuid } from "@nats-io/transport-node";
import { WireError, b64d, canonical, enc, strictParse } from "./canonical.js";
import { signReceipt, verifyDirectoryAnswer } from "./documents.js";
import { encodeEnvelope, envelopeDigest, openEnvelopeKeyed, parseEnvelope, sealEnvelope } from "./envelope.js";
import { fileName } from "./model.js";
import { checkEncryptionKey, checkVerifyKey, encryptionKid, signingKid, verifyKeyOf } from "./keys.js";
import * as subjects from "./subjects.js";

const MAX_REPLY_BYTES = 8 * 1024 * 1024;
const DIRECTORY_PAGE = 100;

/** Read a plain (not passphrase-protected) keystore file: docs/spec/keys.md. */
export function loadKeystore(path) {
  const ks = strictParse(readFileSync(path), 256 * 1024);
  if ("kdf" in ks) throw new Error(`${path} is protected by a passphrase; this client reads plain keystores only`);
  if (ks.v !== 1) throw new WireError("unsupported_version", "keystore version");
  const current = ks.signing_keys.at(-1);
  const seed = b64d(current.private, "signing key", 32);
  const publicKey = verifyKeyOf(seed);
  if (signingKid(publicKey) !== current.kid) throw new Error("keystore is damaged: signing key does not match its id");
  const encryption = {};
  for (const k of ks.encryption_keys) encryption[k.kid] = { kem: k.kem, private: b64d(k.private, "kem key", 96) };
  const pinned = { kid: ks.directory_key.kid, public: checkVerifyKey(b64d(ks.directory_key.public, "directory key", 32)) };
  if (signingKid(pinned.public) !== pinned.kid) throw new Error("keystore is damaged: directory key does not match its id");
  return { agency: subjects.checked(ks.agency), seed, publicKey, encryption, pinned, natsSeed: ks.nats_seed, natsJwt: ks.nats_jwt ?? null };
}

export class Agency {
  static async connect(keystore, url) {
    const seed = enc(keystore.natsSeed);
    const nc = await connect({
      servers: url,
      name: keystore.agency,
      // The only subscribe prefix the agency's NATS user is allowed (nats.md).
      inboxPrefix: subjects.inboxPrefix(keystore.agency),
      authenticator: keystore.natsJwt ? jwtAuthenticator(keystore.natsJwt, seed) : nkeyAuthenticator(seed),
      timeout: 5000,
    });
    return new Agency(keystore, nc);
  }

  constructor(keystore, nc) {
    this.ks = keystore;
    this.agency = keystore.agency;
    this.nc = nc;
  }

  async close() {
    await this.nc.drain();
  }

  /** One agency API request; the reply object, or a WireError carrying its code. */
  async ask(op, body, timeoutMs = 5000) {
    const msg = await this.nc.request(subjects.api(this.agency, op), canonical(body), { timeout: timeoutMs });
    const reply = strictParse(msg.data, MAX_REPLY_BYTES);
    const keys = Object.keys(reply);
    if (keys.length === 1 && keys[0] === "error") throw new WireError(reply.error.code, reply.error.message);
    return reply;
  }

  /** Signed directory records of agencies (checked against the pinned key), by id. */
  async directory(agencies) {
    const out = {};
    for (let k = 0; k < agencies.length; k += DIRECTORY_PAGE) {
      const asked = agencies.slice(k, k + DIRECTORY_PAGE);
      const excerpt = verifyDirectoryAnswer(await this.ask("directory", { agencies: asked }), "directory", this.ks.pinned);
      for (const record of excerpt.agencies) {
        if (!asked.includes(record.id)) throw new WireError("directory_mismatch", "a record not asked for");
        out[record.id] = record;
      }
    }
    return out;
  }

  /** The originator's signing key the envelope names, if its record lists it unrevoked. */
  async senderKey(env) {
    const record = (await this.directory([env.header.originator]))[env.header.originator];
    const key = record?.signing_keys.find((s) => s.kid === env.sig.kid);
    if (!key) throw new WireError("key_not_bound_to_sender", "signed by a key the directory does not know");
    if (key.revoked_at != null && key.revoked_at <= env.header.created_at) throw new WireError("key_revoked", "signed after its key was revoked");
    const publicKey = checkVerifyKey(b64d(key.public, "signing key", 32));
    if (signingKid(publicKey) !== key.kid) throw new WireError("bad_key", "directory key id does not match its key");
    return publicKey;
  }

  /**
   * For a forward with a grant (forwarding.md): the grant's signing key as the originator's
   * signed directory record lists it, as a lookup for openEnvelopeKeyed; null otherwise.
   */
  async grantKeyOf(env) {
    const grant = env.header.forward_of?.grant;
    if (!grant) return null;
    const record = (await this.directory([grant.originator]))[grant.originator];
    const key = record?.signing_keys.find((s) => s.kid === grant.kid);
    const held = key ? { public: checkVerifyKey(b64d(key.public, "signing key", 32)), revoked_at: key.revoked_at } : null;
    return (agency, kid) => (agency === grant.originator && kid === grant.kid ? held : null);
  }

  /**
   * Pull up to batch deliveries from one of the agency's consumers with a raw
   * $JS.API.CONSUMER.MSG.NEXT request (no consumer info needed: nats.md). Without
   * waitMs the server answers at once (no_wait).
   */
  async pull(durable, batch, waitMs) {
    const inbox = `${subjects.inboxPrefix(this.agency)}.${nuid.next()}`;
    const sub = this.nc.subscribe(inbox);
    const request = waitMs ? { batch, expires: waitMs * 1_000_000 } : { batch, no_wait: true };
    this.nc.publish(subjects.pullSubject(durable), canonical(request), { reply: inbox });
    const timer = setTimeout(() => sub.unsubscribe(), (waitMs ?? 0) + 5000);
    const got = [];
    try {
      for await (const m of sub) {
        if (m.data.length === 0 && m.headers?.code) {
          if (m.headers.code === 100) continue; // a heartbeat
          break; // 404 no messages, 408 expired, 409 ...: this pull is over
        }
        got.push(m);
        if (got.length >= batch) break;
      }
    } finally {
      clearTimeout(timer);
      sub.unsubscribe();
    }
    return got;
  }

  /** Deliveries, most urgent first: the urgent consumer, then the other, then a wait. */
  async take(batch, waitMs) {
    const [urgent, normal] = subjects.durables(this.agency);
    for (const durable of [urgent, normal]) {
      const got = await this.pull(durable, batch);
      if (got.length) return got;
    }
    return this.pull(normal, 1, waitMs);
  }

  async ack(msg) {
    await this.nc.request(msg.reply, enc("+ACK"), { timeout: 5000 }); // ack_sync: JetStream confirms
  }

  term(msg) {
    this.nc.publish(msg.reply, enc("+TERM"));
  }

  /** Publish through the broker's gate; resolves to JetStream's PubAck or throws its error. */
  async store(subject, payload, msgId) {
    const h = headers();
    h.set("Nats-Msg-Id", msgId);
    const reply = await this.nc.request(subject, payload, { headers: h, timeout: 5000 });
    const ack = JSON.parse(new TextDecoder().decode(reply.data));
    if (ack.error) throw new WireError("refused", `JetStream refused it: ${ack.error.description ?? ack.error.code}`);
    return ack;
  }

  /** Verify and open one delivery, send its signed receipt, then ack it. */
  async handle(msg, now = Math.floor(Date.now() / 1000)) {
    const env = parseEnvelope(msg.data);
    const senderPublic = await this.senderKey(env);
    const grantKey = await this.grantKeyOf(env);
    const { inner, contentKey, forwarded } = openEnvelopeKeyed(env, { recipient: this.agency, keys: this.ks.encryption, senderPublic, grantKey });
    if (env.header.expires_at != null && env.header.expires_at <= now) throw new WireError("expired", "bulletin expired");
    const digest = envelopeDigest(env);
    const receipt = signReceipt({
      bulletinId: env.header.bulletin_id,
      originator: env.header.originator,
      recipient: this.agency,
      envelopeDigest: digest,
      receivedAt: now,
      seed: this.ks.seed,
      publicKey: this.ks.publicKey,
    });
    await this.store(subjects.receipt(this.agency), canonical(receipt), subjects.receiptMsgId(receipt.bulletin_id, this.agency));
    await this.ack(msg);
    return { env, inner, digest, receipt, contentKey, forwarded };
  }

  /** One chunk over att.get (attachments.md): its ciphertext, or a WireError. */
  async fetchChunk(bulletinId, attachment, chunk) {
    const body = canonical({ attachment, bulletin_id: bulletinId, chunk });
    const msg = await this.nc.request(subjects.attach(this.agency, "get"), body, { timeout: 10000 });
    if (msg.headers?.get("Istmo-Kind") !== att.CHUNK_KIND) {
      const reply = strictParse(msg.data, 1 << 16);
      throw new WireError(reply.error?.code ?? "malformed", reply.error?.message ?? "not a chunk");
    }
    return msg.data;
  }

  /**
   * Fetch, check and open every attachment of an opened bulletin into dir/<name>; a file
   * gets its name only once its chunks give the signed digest. Returns the paths.
   */
  async saveAttachments(env, inner, contentKey, dir) {
    const saved = [];
    const refs = env.header.attachments ?? [];
    mkdirSync(dir, { recursive: true });
    for (const [i, ref] of refs.entries()) {
      const name = fileName(inner.content.attachments[i].name, "attachment name");
      const key = att.attachmentKey(contentKey, env.header.bulletin_id, i);
      const digest = new att.ChunkDigest(i, ref.chunks);
      const dest = join(dir, name);
      const part = `${dest}.part`;
      const fd = openSync(part, "w");
      try {
        for (let j = 0; j < ref.chunks; j++) {
          const ct = await this.fetchChunk(env.header.bulletin_id, i, j);
          if (ct.length !== att.plainSize(ref, j) + att.TAG_BYTES) throw new WireError("chunk_invalid", `${name}: chunk ${j} is not the signed size`);
          writeSync(fd, att.openChunk(key, env.header.bulletin_id, i, j, ct, j === ref.chunks - 1));
          digest.add(sha256(ct));
        }
        if (digest.hexdigest() !== ref.digest) throw new WireError("digest_mismatch", `${name}: not the chunks its originator signed`);
      } catch (e) {
        closeSync(fd);
        rmSync(part, { force: true });
        throw e;
      }
      closeSync(fd);
      renameSync(part, dest);
      saved.push(dest);
    }
    return saved;
  }

  /** Ask who may receive a bulletin with these labels, seal it for them and publish it. */
  async publish({ title, text, labels, expiresAt, now = Math.floor(Date.now() / 1000) }) {
    const request = { labels, ...(expiresAt != null ? { expires_at: expiresAt } : {}) };
    const answer = await this.ask("recipients", request);
    const records = await this.directory([...answer.recipients]);
    const recipients = {};
    for (const id of answer.recipients) {
      const r = records[id];
      if (!r || r.status !== "active" || !r.encryption_key) continue; // never seal for those
      const pub = checkEncryptionKey(r.encryption_key.kem, b64d(r.encryption_key.public, "kem key", 1216));
      if (encryptionKid(r.encryption_key.kem, pub) !== r.encryption_key.kid) throw new WireError("bad_key", `record of ${id}: key id does not match`);
      recipients[id] = { kem: r.encryption_key.kem, public: pub };
    }
    if (!Object.keys(recipients).length) throw new WireError("policy_deny", "no agency may receive this bulletin");
    const env = sealEnvelope({
      content: { title, text }, labels, originator: this.agency, signingSeed: this.ks.seed,
      signingPublic: this.ks.publicKey, recipients, now, expiresAt,
    });
    const raw = encodeEnvelope(env);
    await this.store(subjects.ingest(this.agency), raw, subjects.ingestMsgId(this.agency, envelopeDigest(env)));
    return env;
  }

  /** Ask the relay's verdict until it is decided or timeoutMs passes. */
  async verdict(bulletinId, timeoutMs = 15000) {
    const deadline = Date.now() + timeoutMs;
    for (let delay = 50; ; delay = Math.min(delay * 2, 500)) {
      const status = await this.ask("status", { bulletin_id: bulletinId });
      if (status.state !== "pending" || Date.now() > deadline) return status;
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}
