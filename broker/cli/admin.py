"""``istmo admin``: add agencies with their enrolment tokens, suspend, reinstate and revoke
agencies, revoke keys, show and set subscriptions.

Run where the broker's data directory is. Each change is recorded with an audit event
and reaches a running stack at once: nats-server is reloaded without a restart, so a
suspended agency's connection is closed within milliseconds and a new one refused, while
its queued deliveries wait in its durable consumer until it is reinstated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

from broker.cli._common import operator_name
from broker.cli.agency_status import tell_running_stack
from broker.config import Settings
from broker.directory.enrolment import (
    NewAgency,
    create_agency,
    issue_token,
    start_reenrolment,
)
from broker.directory.jurisdictions import add_partner
from broker.directory.lifecycle import (
    CONTROL_DIRECTORY_SUBJECT,
    revoke_signing_key,
)
from broker.directory.subscriptions import set_subscriptions, subscriptions_of
from broker.runtime.control import notify_running_stack
from broker.runtime.datadir import DataDir
from broker.runtime.stackfile import read_stack_file
from broker.store.registry import Registry
from schemas.enrolment import split_enrolment_token
from schemas.errors import ConfigError
from schemas.labels import Classification

__all__ = [
    "agency_add_command",
    "agency_list_command",
    "agency_reenrol_command",
    "agency_show_command",
    "agency_token_command",
    "jurisdiction_add_command",
    "jurisdiction_list_command",
    "key_revoke_command",
    "subscriptions_command",
]


def _open(args: argparse.Namespace) -> DataDir:
    # An empty registry gets the demo directory, as on `istmo up`.
    settings = Settings.from_env(data_dir=args.data_dir, policy_dir=args.policy_dir)
    return DataDir.open(settings, demo=True, out=lambda _line: None)


def _tell(data: DataDir) -> None:
    tell_running_stack(data.settings)


def key_revoke_command(args: argparse.Namespace) -> int:
    data = _open(args)
    registry = data.registry
    revoke_signing_key(registry, args.agency, args.kid, actor=operator_name(), force=args.force)
    print(f"{args.agency}: key {args.kid} revoked")
    _tell(data)
    return 0


def subscriptions_command(args: argparse.Namespace) -> int:
    """Show an agency's topics, or replace them with ``--set`` (empty: none)."""
    data = _open(args)
    registry = data.registry
    if args.set is None:
        topics = subscriptions_of(registry, args.agency)
        if topics is None:
            raise ConfigError(f"unknown agency {args.agency}", code="unknown_agency")
        print(f"{args.agency}: {', '.join(topics) or 'no topics'}")
        return 0
    wanted = [t.strip() for t in args.set.split(",") if t.strip()]
    change = set_subscriptions(registry, args.agency, wanted, _actor())
    print(f"{args.agency}: {', '.join(change.topics) or 'no topics'}")
    if not change.changed:
        print("no change")
        return 0
    added, removed = ", ".join(change.added) or "none", ", ".join(change.removed) or "none"
    print(f"added: {added}; removed: {removed}")
    _tell(data)
    return 0


def _actor() -> str:
    return operator_name()


def agency_add_command(args: argparse.Namespace) -> int:
    data = _open(args)
    registry = data.registry
    now = int(time.time())
    new = NewAgency(
        id=args.agency,
        name=args.name,
        sector=args.sector,
        clearance=args.clearance,
        topics=tuple(args.topic),
        state=args.state,
        communities=tuple(args.community or ()),
        min_source_grade=args.min_source_grade,
    )
    create_agency(registry, new, created_by=_actor(), now=now)
    token = issue_token(registry, args.agency, args.token_ttl, _actor(), now=now)
    if not args.json:
        where = f"state {new.state}" if new.state else "communities " + ",".join(new.communities)
        topics = ", ".join(new.topics) or "none"
        print(
            f"{new.id}: added ({new.sector}, {where}, clearance {new.clearance}; topics {topics})"
        )
    _show_token(data, args, token, now)
    return 0


def jurisdiction_add_command(args: argparse.Namespace) -> int:
    """``istmo admin jurisdiction add``: a partner region, for its gateway agency."""
    data = _open(args)
    add_partner(data.registry, args.code, args.name, actor=_actor(), now_ms=int(time.time() * 1000))
    print(
        f"{args.code}: added (partner region {args.name!r}, in no community); enrol its "
        f"gateway with `istmo admin agency add ... --state {args.code}`"
    )
    _tell(data)
    return 0


def jurisdiction_list_command(args: argparse.Namespace) -> int:
    """``istmo admin jurisdiction list``: every state, community and partner region."""
    data = _open(args)
    for j in sorted(data.registry.jurisdictions(), key=lambda j: (j.kind, j.code)):
        parents = f" (in {j.parents})" if j.parents else ""
        print(f"{j.code}\t{j.kind}\t{j.name}{parents}")
    return 0


def agency_token_command(args: argparse.Namespace) -> int:
    data = _open(args)
    registry = data.registry
    now = int(time.time())
    token = issue_token(registry, args.agency, args.token_ttl, _actor(), now=now)
    _show_token(data, args, token, now)
    return 0


def agency_reenrol_command(args: argparse.Namespace) -> int:
    data = _open(args)
    now = int(time.time())
    token = start_reenrolment(data.registry, args.agency, args.token_ttl, _actor(), now=now)
    if not args.json:
        print(
            f"{args.agency}: every key revoked (signing, encryption, NATS user); it is "
            "disconnected until it enrols new ones"
        )
    _show_token(data, args, token, now)
    return 0


def agency_list_command(args: argparse.Namespace) -> int:
    """Every agency: id, status, sector, state or communities, and whether it enrolled."""
    registry = _open(args).registry
    rows = [_agency_doc(registry, a.id) for a in registry.agencies()]
    if args.json:
        for doc in rows:
            print(json.dumps(doc))
        return 0
    print(f"{'AGENCY':<20} {'STATUS':<10} {'SECTOR':<10} {'WHERE':<14} KEYS")
    for doc in rows:
        where = doc["state"] or ",".join(doc["communities"])
        valid = sum(1 for k in doc["signing_keys"] if k["revoked_at"] is None)
        keys = f"{valid} signing" if doc["nats_user"] else "not enrolled"
        print(f"{doc['id']:<20} {doc['status']:<10} {doc['sector']:<10} {where:<14} {keys}")
    return 0


def agency_show_command(args: argparse.Namespace) -> int:
    """One agency with its keys: signing (valid or revoked when), encryption, NATS user."""
    doc = _agency_doc(_open(args).registry, args.agency)
    if args.json:
        print(json.dumps(doc))
        return 0
    print(f"{doc['id']}: {doc['name']} ({doc['sector']}, {doc['status']})")
    print(f"  where:      {doc['state'] or ', '.join(doc['communities'])}")
    print(f"  clearance:  {doc['clearance']}")
    print(f"  topics:     {', '.join(doc['topics']) or 'none'}")
    for k in doc["signing_keys"]:
        revoked = k["revoked_at"]
        print(f"  signing:    {k['kid']}  {'revoked ' + _when(revoked) if revoked else 'valid'}")
    for k in doc["encryption_keys"]:
        print(f"  encryption: {k['kid']}  {k['kem']}  {'current' if k['current'] else 'retired'}")
    print(f"  NATS user:  {doc['nats_user'] or 'none (not enrolled)'}")
    return 0


def _when(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _agency_doc(registry: Registry, agency: str) -> dict[str, Any]:
    row = registry.agency(agency)
    if row is None:
        raise ConfigError(f"unknown agency {agency}", code="unknown_agency")
    nats = {u.agency: u.nkey_public for u in registry.nats_users()}
    return {
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "sector": row.sector,
        "state": row.state,
        "communities": [c for c in row.communities.split(",") if c],
        "clearance": list(Classification)[row.clearance].value,
        "topics": list(subscriptions_of(registry, agency) or ()),
        "signing_keys": [
            {"kid": k.kid, "created_at": k.created_at, "revoked_at": k.revoked_at}
            for k in registry.signing_keys(agency)
        ],
        "encryption_keys": [
            {"kid": k.kid, "kem": k.kem, "created_at": k.created_at, "current": k.current}
            for k in registry.encryption_keys(agency)
        ],
        "nats_user": nats.get(agency),
    }


def _show_token(data: DataDir, args: argparse.Namespace, token: str, now: int) -> None:
    """Print the token, once, with what the agency needs to enrol; then tell the stack."""
    parts = split_enrolment_token(token)
    assert parts is not None  # noqa: S101  # issue_token made it
    info = read_stack_file(data.settings.data_dir) or {}
    s = data.settings
    # Where the agency enrols from: the public URL (this command's, else the running
    # stack's), else the API's loopback URL.
    recorded = info.get("public_url") or info.get("api_url")
    broker = s.public_url or (recorded if isinstance(recorded, str) else s.api_url)
    kid = data.directory_key.verify_key.kid
    expires_at = now + args.token_ttl
    applied = asyncio.run(notify_running_stack(data.settings, CONTROL_DIRECTORY_SUBJECT))
    if args.json:
        doc = {
            "agency": args.agency,
            "token": token,
            "token_id": parts[0],
            "expires_at": expires_at,
            "directory_kid": kid,
            "broker": broker,
            "applied": applied,
        }
        print(json.dumps(doc))
        return
    until = datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"one-time enrolment token for {args.agency}, good until {until} (shown only now):")
    print()
    print(f"  {token}")
    print()
    print(f"directory key the agency will pin: {kid}")
    print("hand both to the agency over a channel you trust; on its own machine it runs:")
    print(
        f"  istmo enroll --broker {broker} --token-file TOKEN_FILE "
        f"--directory-kid {kid} --out {args.agency}.json"
    )
    if applied:
        print("the running stack applied it")
    else:
        print("no running stack for this data directory: it applies at the next `istmo up`")
