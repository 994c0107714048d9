// Istmo console: check one audit log entry in the browser, trusting nothing the page says
// about it (RFC 9162 section 2.1.3.2 inclusion, Ed25519 tree head signature).
//
// Inputs (data-proof on #proof-data): the entry's stored bytes (base64), its index, the
// latest signed tree head document as stored, an inclusion proof into it, and the log's
// public key. Steps:
//   1. the head names the log key's id;
//   2. its Ed25519 signature over "istmo/v1/tree-head\0" + canonical JSON of the head
//      verifies under the log key (SubtleCrypto);
//   3. it is a head of the expected log (origin);
//   4. leaf hash = SHA-256(0x00 || stored bytes);
//   5. the root recomputed from the leaf hash and the proof equals the signed root.
// Any failure shows a loud mark. No other host is contacted; nothing is sent anywhere.
"use strict";

(function () {
  const holder = document.getElementById("proof-data");
  const verdict = document.getElementById("verdict");
  const steps = document.getElementById("steps");
  if (!holder || !verdict || !steps) return;
  const data = JSON.parse(holder.dataset.proof);
  const labels = JSON.parse(holder.dataset.labels);
  if (!data.head || data.tree_size <= data.index) return; // not covered yet: said in the page

  const enc = new TextEncoder();

  function fill(text, values) {
    return text.replace(/\{(\w+)\}/g, (m, k) => (k in values ? String(values[k]) : m));
  }
  function step(ok, key, values) {
    const li = document.createElement("li");
    li.className = ok ? "ok" : "bad";
    const mark = document.createElement("span");
    mark.className = "mark";
    mark.setAttribute("aria-hidden", "true");
    mark.textContent = ok ? "\u2713 " : "\u2717 ";
    li.appendChild(mark);
    li.appendChild(document.createTextNode(fill(labels[key] || key, values || {})));
    steps.appendChild(li);
  }
  function b64(text) {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function concat(...parts) {
    const n = parts.reduce((a, p) => a + p.length, 0);
    const out = new Uint8Array(n);
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }
  function equal(a, b) {
    if (a.length !== b.length) return false;
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
    return diff === 0;
  }
  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }
  // Canonical JSON as schemas/canonical.py writes it: sorted keys, no spaces.
  function canonical(value) {
    if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
    if (value !== null && typeof value === "object") {
      return "{" + Object.keys(value).sort().map(
        (k) => JSON.stringify(k) + ":" + canonical(value[k])).join(",") + "}";
    }
    return JSON.stringify(value);
  }
  // RFC 9162 2.1.3.2, with the index and size from the caller (BigInt: sizes reach 2^53).
  async function rootFromProof(index, size, leaf, proof) {
    let fn = BigInt(index), sn = BigInt(size) - 1n, r = leaf;
    if (fn > sn) throw new Error("index outside the tree");
    for (const p of proof) {
      if (p.length !== 32) throw new Error("a proof hash is not 32 bytes");
      if (sn === 0n) throw new Error("the proof is too long");
      if ((fn & 1n) === 1n || fn === sn) {
        r = await sha256(concat(Uint8Array.of(1), p, r));
        if ((fn & 1n) === 0n) {
          while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
        }
      } else {
        r = await sha256(concat(Uint8Array.of(1), r, p));
      }
      fn >>= 1n; sn >>= 1n;
    }
    if (sn !== 0n) throw new Error("the proof is too short");
    return r;
  }

  function finish(ok, why) {
    verdict.classList.remove("checking");
    verdict.classList.add(ok ? "ok" : "bad");
    verdict.setAttribute("role", ok ? "status" : "alert");
    verdict.textContent = ok ? verdict.dataset.ok : verdict.dataset.bad;
    verdict.dataset.result = ok ? "verified" : "failed";
    if (!ok && why) step(false, "entry.step.fail", { what: why });
  }

  async function run() {
    const sth = JSON.parse(data.head);
    const head = sth.head;
    // 1. The pinned key.
    if (!data.log_key || sth.kid !== data.kid) {
      step(false, "entry.step.key", { kid: data.kid || "?" });
      return finish(false, "tree head key");
    }
    step(true, "entry.step.key", { kid: data.kid });
    // 2. The signature.
    const key = await crypto.subtle.importKey(
      "raw", b64(data.log_key), { name: "Ed25519" }, false, ["verify"]);
    const signed = concat(enc.encode("istmo/v1/tree-head\u0000"), enc.encode(canonical(head)));
    const sigOk = await crypto.subtle.verify({ name: "Ed25519" }, key, b64(sth.sig), signed);
    step(sigOk, "entry.step.sig", { size: head.tree_size });
    if (!sigOk) return finish(false, "tree head signature");
    // 3. The log's name.
    const originOk = head.origin === data.origin;
    step(originOk, "entry.step.origin", { origin: data.origin });
    if (!originOk) return finish(false, "origin");
    if (head.tree_size !== data.tree_size) return finish(false, "proof size is not the head's");
    // 4. The leaf hash of the stored bytes.
    const leaf = await sha256(concat(Uint8Array.of(0), b64(data.leaf)));
    step(true, "entry.step.leaf", {});
    // 5. The root.
    const proof = data.proof.map(b64);
    const root = await rootFromProof(data.index, head.tree_size, leaf, proof);
    const rootOk = equal(root, b64(head.root_hash));
    step(rootOk, "entry.step.root", { n: proof.length });
    finish(rootOk, rootOk ? null : "root mismatch");
  }

  run().catch((err) => finish(false, String(err && err.message ? err.message : err)));
})();
