// NATS names for one agency (docs/spec/nats.md).
import { WireError } from "./canonical.js";
import { AGENCY_ID } from "./model.js";

export const DELIVER_STREAM = "ISTMO_DELIVER";
export const ANNOUNCE = "istmo.announce";
export const API_OPS = [
  "recipients", "resolve", "explain", "directory", "changes", "key-log", "status", "receipts",
  "rotate", "revoke-key", "dead-letters", "withheld", "recall",
  "groups", "group-roster", "group-epoch", "group-keys",
  "reply-context", "rfi-list", "rfi-close",
  "forward-request", "forward-requests", "forward-decide", "desk-summary", "push",
];

export function checked(agency) {
  if (typeof agency !== "string" || !AGENCY_ID.test(agency)) {
    throw new WireError("bad_agency_id", "invalid agency id: use 3-32 of a-z, 0-9 and '-'");
  }
  return agency;
}

export const ingest = (a) => `istmo.ingest.${checked(a)}`;
export const receipt = (a) => `istmo.receipt.${checked(a)}`;
export function api(a, op) {
  if (!API_OPS.includes(op)) throw new Error(`unknown API operation ${op}`);
  return `istmo.api.${checked(a)}.${op}`;
}
// Chunk operations of attachments (attachments.md): one token deeper than the API's.
export const ATTACH_OPS = ["put", "have", "get"];
export function attach(a, op) {
  if (!ATTACH_OPS.includes(op)) throw new Error(`unknown attachment operation ${op}`);
  return `istmo.api.${checked(a)}.att.${op}`;
}
export const inboxPrefix = (a) => `_INBOX_${checked(a)}`;
export const accountName = (a) => "AG_" + checked(a).replaceAll("-", "_").toUpperCase();
export const deliver = (a, precedence) => `istmo.deliver.${checked(a)}.${precedence.toLowerCase()}`;
export const urgentDurable = (a) => `urgent-${checked(a)}`;
export const deliverDurable = (a) => `deliver-${checked(a)}`;
export const durables = (a) => [urgentDurable(a), deliverDurable(a)]; // drained in this order
export const pullSubject = (durable) => `$JS.API.CONSUMER.MSG.NEXT.${DELIVER_STREAM}.${durable}`;
export const ackSubjects = (durable) => `$JS.ACK.${DELIVER_STREAM}.${durable}.>`;
export function filterSubjects(durable) {
  const agency = checked(durable.replace(/^(urgent|deliver)-/, ""));
  if (durable.startsWith("urgent-")) return [deliver(agency, "FLASH"), deliver(agency, "IMMEDIATE")];
  return [deliver(agency, "PRIORITY"), deliver(agency, "ROUTINE"), `istmo.deliver.${agency}`];
}
export const ingestMsgId = (a, envelopeDigest) => `${checked(a)}:${envelopeDigest}`;
export const receiptMsgId = (bulletinId, recipient) => `${bulletinId}:${checked(recipient)}:receipt`;
