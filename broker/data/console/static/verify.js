// Istmo console: checks made in the browser, trusting nothing the page says about them.
// No library, no other host: SubtleCrypto SHA-256 and Ed25519 (Chromium 137+, Firefox 129+,
// Safari 17+), in a secure context (https, or http://127.0.0.1).
//
// 1. One audit log entry (#proof-data on /console/log/<index>): the entry's stored bytes,
//    its index, the latest signed tree head as stored, an inclusion proof into it, and the
//    log's public key. Steps:
//      1. the head names the log key's id;
//      2. its Ed25519 signature over "istmo/v1/tree-head\0" + canonical JSON of the head
//         verifies under the log key;
//      3. it is a head of the expected log (origin);
//      4. leaf hash = SHA-256(0x00 || stored bytes);
//      5. the root recomputed from the leaf hash and the proof (RFC 9162 2.1.3.2) equals
//         the signed root.
// 2. Consistency between two signed tree heads (#consistency-data on /console/integrity):
//    both heads' keys, signatures and origin as above, then the RFC 9162 2.1.4.2
//    consistency proof must rebuild both signed roots.
// Any failure shows a loud mark naming the step. Nothing is sent anywhere.
"use strict";

(function () {
  const enc = new TextEncoder();

  function fill(text, values) {
    return text.replace(/\{(\w+)\}/g, (m, k) => (k in values ? String(values[k]) : m));
  }
  function stepper(list, labels) {
    return function step(ok, key, values) {
      const li = document.createElement("li");
      li.className = ok ? "ok" : "bad";
      const mark = document.createElement("span");
      mark.className = "mark";
      mark.setAttribute("aria-hidden", "true");
      mark.textContent = ok ? "\u2713 " : "\u2717 ";
      li.appendChild(mark);
      li.appendChild(document.createTextNode(fill(labels[key] || key, values || {})));
      list.appendChild(li);
    };
  }
  function finisher(verdict, step) {
    return function finish(ok, why) {
      verdict.classList.remove("checking");
      verdict.classList.add(ok ? "ok" : "bad");
      verdict.setAttribute("role", ok ? "status" : "alert");
      verdict.textContent = ok ? verdict.dataset.ok : verdict.dataset.bad;
      verdict.dataset.result = ok ? "verified" : "failed";
      if (!ok && why) step(false, "entry.step.fail", { what: why });
    };
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
  function node(left, right) {
    return sha256(concat(Uint8Array.of(1), left, right));
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
  // Steps 1-3 for one signed tree head document; returns the head, or throws.
  async function verifiedHead(raw, data) {
    const sth = JSON.parse(raw);
    if (!data.log_key || sth.kid !== data.kid) throw new Error("tree head key is not the log key");
    const key = await crypto.subtle.importKey(
      "raw", b64(data.log_key), { name: "Ed25519" }, false, ["verify"]);
    const signed = concat(enc.encode("istmo/v1/tree-head\u0000"), enc.encode(canonical(sth.head)));
    if (!(await crypto.subtle.verify({ name: "Ed25519" }, key, b64(sth.sig), signed))) {
      throw new Error("tree head signature (size " + sth.head.tree_size + ")");
    }
    if (sth.head.origin !== data.origin) throw new Error("tree head of another log");
    return sth.head;
  }
  // RFC 9162 2.1.3.2, with the index and size from the caller (BigInt: sizes reach 2^53).
  async function rootFromProof(index, size, leaf, proof) {
    let fn = BigInt(index), sn = BigInt(size) - 1n, r = leaf;
    if (fn > sn) throw new Error("index outside the tree");
    for (const p of proof) {
      if (p.length !== 32) throw new Error("a proof hash is not 32 bytes");
      if (sn === 0n) throw new Error("the proof is too long");
      if ((fn & 1n) === 1n || fn === sn) {
        r = await node(p, r);
        if ((fn & 1n) === 0n) {
          while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
        }
      } else {
        r = await node(r, p);
      }
      fn >>= 1n; sn >>= 1n;
    }
    if (sn !== 0n) throw new Error("the proof is too short");
    return r;
  }
  // RFC 9162 2.1.4.2 (as schemas/merkle_verify.py): true if the new tree extends the old.
  async function consistent(oldSize, newSize, oldRoot, newRoot, proof) {
    let m = BigInt(oldSize), n = BigInt(newSize);
    if (n < m) return false;
    if (m === n) return proof.length === 0 && equal(oldRoot, newRoot);
    if (m === 0n) return proof.length === 0;
    if (proof.some((p) => p.length !== 32)) return false;
    const seeded = (m & (m - 1n)) === 0n; // a power of two: the old root starts the path
    const path = seeded ? [oldRoot, ...proof] : proof.slice();
    if (path.length === 0) return false;
    let fn = m - 1n, sn = n - 1n;
    while ((fn & 1n) === 1n) { fn >>= 1n; sn >>= 1n; }
    let fr = path[0], sr = path[0];
    for (const c of path.slice(1)) {
      if (sn === 0n) return false;
      if ((fn & 1n) === 1n || fn === sn) {
        fr = await node(c, fr);
        sr = await node(c, sr);
        if ((fn & 1n) === 0n) {
          while (fn !== 0n && (fn & 1n) === 0n) { fn >>= 1n; sn >>= 1n; }
        }
      } else {
        sr = await node(sr, c);
      }
      fn >>= 1n; sn >>= 1n;
    }
    return sn === 0n && equal(fr, oldRoot) && equal(sr, newRoot);
  }

  async function checkEntry(holder) {
    const verdict = document.getElementById("verdict");
    const list = document.getElementById("steps");
    const data = JSON.parse(holder.dataset.proof);
    const labels = JSON.parse(holder.dataset.labels);
    if (!verdict || !list || !data.head || data.tree_size <= data.index) return;
    if (!data.log_key) { // nothing to check against: say so, neither pass nor fail
      verdict.textContent = verdict.dataset.nokey;
      verdict.dataset.result = "unchecked";
      return;
    }
    const step = stepper(list, labels);
    const finish = finisher(verdict, step);
    try {
      const head = await verifiedHead(data.head, data);
      step(true, "entry.step.key", { kid: data.kid });
      step(true, "entry.step.sig", { size: head.tree_size });
      step(true, "entry.step.origin", { origin: data.origin });
      if (head.tree_size !== data.tree_size) return finish(false, "proof size is not the head's");
      const leaf = await sha256(concat(Uint8Array.of(0), b64(data.leaf)));
      step(true, "entry.step.leaf", {});
      const proof = data.proof.map(b64);
      const root = await rootFromProof(data.index, head.tree_size, leaf, proof);
      const rootOk = equal(root, b64(head.root_hash));
      step(rootOk, "entry.step.root", { n: proof.length });
      finish(rootOk, rootOk ? null : "root mismatch");
    } catch (err) {
      finish(false, String(err && err.message ? err.message : err));
    }
  }

  async function checkConsistency(holder) {
    const verdict = document.getElementById("consistency-browser");
    const list = document.getElementById("consistency-steps");
    const data = JSON.parse(holder.dataset.check);
    const labels = JSON.parse(holder.dataset.labels);
    if (!verdict || !list) return;
    const step = stepper(list, labels);
    const finish = finisher(verdict, step);
    try {
      const oldHead = await verifiedHead(data.old_head, data);
      const newHead = await verifiedHead(data.new_head, data);
      if (oldHead.tree_size !== data.old || newHead.tree_size !== data.new) {
        return finish(false, "the heads are not of the sizes asked for");
      }
      step(true, "integrity.browser.sigs", { old: data.old, new: data.new });
      const ok = await consistent(data.old, data.new, b64(oldHead.root_hash),
        b64(newHead.root_hash), data.proof.map(b64));
      step(ok, "integrity.browser.proof", { n: data.proof.length });
      finish(ok, ok ? null : "consistency proof");
    } catch (err) {
      finish(false, String(err && err.message ? err.message : err));
    }
  }

  const entry = document.getElementById("proof-data");
  if (entry) checkEntry(entry);
  const cons = document.getElementById("consistency-data");
  if (cons) checkConsistency(cons);
})();
