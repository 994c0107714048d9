#!/usr/bin/env node
// Publish a bulletin as an agency and wait for the relay's verdict; prints it as JSON.
//   node bin/publish.js --keystore KEYSTORE.json --nats nats://HOST:PORT \
//       --labels '{"topic":"drug-trafficking","classification":"RESTRICTED","tlp":"AMBER","rel_to":["SICA"]}' \
//       --title TITLE --text TEXT
import { parseArgs } from "node:util";
import { Agency, loadKeystore } from "../src/agency.js";
import { labels as checkLabels } from "../src/model.js";

const { values: o } = parseArgs({
  options: {
    keystore: { type: "string" }, nats: { type: "string" }, labels: { type: "string" },
    title: { type: "string" }, text: { type: "string", default: "" }, timeout: { type: "string", default: "15" },
  },
});
if (!o.keystore || !o.nats || !o.labels || !o.title) {
  console.error("usage: publish.js --keystore K.json --nats URL --labels JSON --title T [--text T]");
  process.exit(2);
}
const agency = await Agency.connect(loadKeystore(o.keystore), o.nats);
try {
  const env = await agency.publish({ title: o.title, text: o.text, labels: checkLabels(JSON.parse(o.labels)) });
  const verdict = await agency.verdict(env.header.bulletin_id, Number(o.timeout) * 1000);
  console.log(JSON.stringify({ bulletin_id: env.header.bulletin_id, recipients: env.header.recipients, verdict }));
  process.exitCode = verdict.state === "accepted" ? 0 : 1;
} finally {
  await agency.close();
}
