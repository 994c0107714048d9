#!/usr/bin/env node
// Receive bulletins as an agency: verify, open, send the signed receipt, ack. One JSON
// line per bulletin on stdout.
//   node bin/receive.js --keystore KEYSTORE.json --nats nats://HOST:PORT [--count N] [--timeout S]
//       [--save-attachments DIR]   (each bulletin's files into DIR/<bulletin id>/)
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Agency, loadKeystore } from "../src/agency.js";

const { values: o } = parseArgs({
  options: { keystore: { type: "string" }, nats: { type: "string" }, count: { type: "string", default: "1" }, timeout: { type: "string", default: "30" }, "save-attachments": { type: "string" } },
});
if (!o.keystore || !o.nats) {
  console.error("usage: receive.js --keystore KEYSTORE.json --nats nats://HOST:PORT [--count N] [--timeout S]");
  process.exit(2);
}
const agency = await Agency.connect(loadKeystore(o.keystore), o.nats);
const want = Number(o.count);
const deadline = Date.now() + Number(o.timeout) * 1000;
let handed = 0;
try {
  while (handed < want && Date.now() < deadline) {
    const msgs = await agency.take(want - handed, Math.max(1, Math.min(2000, deadline - Date.now())));
    for (const msg of msgs) {
      if (msg.headers?.get("Istmo-Kind") === "withdrawal") {
        console.log(JSON.stringify({ kind: "withdrawal", subject: msg.subject, data: new TextDecoder().decode(msg.data) }));
        await agency.ack(msg);
        continue;
      }
      try {
        const { env, inner, digest, contentKey, forwarded } = await agency.handle(msg);
        handed++;
        const dir = o["save-attachments"];
        const attachments = dir && env.header.attachments
          ? await agency.saveAttachments(env, inner, contentKey, join(dir, env.header.bulletin_id))
          : [];
        console.log(JSON.stringify({
          kind: "bulletin", id: env.header.bulletin_id, originator: env.header.originator,
          labels: env.header.labels, title: inner.content.title, body: inner.content.text,
          created_at: env.header.created_at, envelope_digest: digest,
          in_reply_to: env.header.in_reply_to ?? null, thread: env.header.thread ?? null,
          rfi_due: env.header.rfi_due ?? null, forwarded, attachments,
        }));
      } catch (e) {
        if (!e.code || e.code === "refused") throw e; // the broker, not the bulletin
        console.error(`refused a delivery on ${msg.subject}: ${e.code}`);
        agency.term(msg);
      }
    }
  }
} finally {
  await agency.close();
}
console.error(`received ${handed} of ${want}`);
process.exit(handed === want ? 0 : 1);
