"""``istmo policy check | explain | simulate | adopt``: the policy set, from the shell.

Run where the broker's data directory is (they read its registry); ``adopt`` tells a
running ``istmo up`` to switch at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from broker.cli._common import operator_name
from broker.config import Settings
from broker.directory.policy_sets import (
    CONTROL_POLICY_SUBJECT,
    active_policy_dir,
    adopt,
    simulation_cases,
)
from broker.policy.engine import BulletinFacts, PolicyBundle, PolicyLoadError, simulate
from broker.runtime.control import notify_running_stack
from broker.runtime.datadir import DataDir
from schemas.canonical import strict_loads
from schemas.errors import ConfigError, EnvelopeError
from schemas.ids import parse_agency_id
from schemas.labels import Labels

__all__ = ["adopt_command", "check_command", "explain_command", "simulate_command"]

_PREVIEW_ID = "00000000-0000-4000-8000-000000000000"
MAX_HEADER_BYTES = 64 * 1024


def _open(args: argparse.Namespace) -> DataDir:
    # An empty registry gets the demo directory, as on `istmo up`.
    settings = Settings.from_env(data_dir=args.data_dir, policy_dir=args.policy_dir)
    return DataDir.open(settings, demo=True, out=lambda _line: None)


def _problems(exc: PolicyLoadError) -> str:
    return "policy set refused:\n  " + "\n  ".join(exc.problems)


def check_command(args: argparse.Namespace) -> int:
    data = _open(args)
    registry, directory = data.registry, data.directory
    root = args.dir or active_policy_dir(data.settings, registry)
    try:
        bundle = PolicyBundle.load(root)
        directory.engine_for(bundle)
    except PolicyLoadError as exc:
        raise ConfigError(_problems(exc)) from exc
    print(f"{root}: policy set {bundle.version} is valid ({', '.join(bundle.files)})")
    print(f"checked against the directory {directory.version} ({len(directory.records)} agencies)")
    rules = bundle.prefilter_rules
    print(
        f"prefilter: {', '.join(rules)} (resolve leaves out, before Cedar, whom these rules deny)"
        if rules
        else "prefilter: off (the set proves none of its rules: Cedar decides every candidate)"
    )
    return 0


def _load_header(path: Path) -> tuple[str, Labels, int | None, int | None]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    doc = strict_loads(raw, max_bytes=MAX_HEADER_BYTES)
    if isinstance(doc, dict) and isinstance(doc.get("header"), dict):
        doc = doc["header"]  # a whole envelope
    if not isinstance(doc, dict) or "labels" not in doc or "originator" not in doc:
        raise ConfigError(f'{path}: expected "originator" and "labels"')
    try:
        labels = Labels.model_validate_json(json.dumps(doc["labels"]))
    except ValueError as exc:
        raise EnvelopeError(
            f"{path}: label not allowed: {str(exc).splitlines()[-1].strip()}", code="unknown_label"
        ) from exc
    originator = parse_agency_id(doc["originator"])
    return originator, labels, doc.get("not_before"), doc.get("expires_at")


def explain_command(args: argparse.Namespace) -> int:
    data = _open(args)
    _registry, d = data.registry, data.directory
    originator, labels, not_before, expires_at = _load_header(args.bulletin)
    origin = d.records.get(originator)
    if origin is None:
        raise ConfigError(f"unknown agency {originator}")
    facts = BulletinFacts(
        bulletin_id=_PREVIEW_ID,
        originator=originator,
        origin_state=origin.state,
        labels=labels,
        not_before=not_before,
        expires_at=expires_at,
    )
    now = args.at or max(int(time.time()), not_before or 0)
    candidates = args.agency or [
        c for c in d.candidates(labels.topic, labels.named) if c != originator
    ]
    publish = d.engine.decide_publish(facts, now)
    rows = d.engine.explain(facts, candidates, now)
    if args.json:
        print(
            json.dumps(
                {
                    "policy_version": d.bundle.version,
                    "directory_version": d.version,
                    "publish": {"allowed": publish.allowed, "policy_ids": list(publish.policy_ids)},
                    "candidates": [_explanation_json(e) for e in rows],
                },
                indent=2,
            )
        )
        return 0
    verdict = "may" if publish.allowed else "may NOT"
    print(f"policy {d.bundle.version}, directory {d.version}: {originator} {verdict} publish it")
    allowed = [e for e in rows if e.allowed]
    print(f"{len(allowed)} of {len(rows)} candidates would receive it")
    for e in rows:
        print(f"  {e.agency:<18} {e.summary}")
    return 0


def _explanation_json(e: Any) -> dict[str, Any]:
    return {
        "agency": e.agency,
        "allowed": e.allowed,
        "summary": e.summary,
        "policy_ids": list(e.policy_ids),
        "reasons": list(e.reasons),
        "errors": list(e.errors),
    }


def simulate_command(args: argparse.Namespace) -> int:
    data = _open(args)
    registry, d = data.registry, data.directory
    try:
        candidate_bundle = PolicyBundle.load(args.candidate)
        candidate = d.engine_for(candidate_bundle)
    except PolicyLoadError as exc:
        raise ConfigError(_problems(exc)) from exc
    last = max(1, min(args.last, 100_000))
    cases = simulation_cases(registry, d, last)
    now = int(time.time())
    changes = simulate(d.engine, candidate, cases, now)
    if args.json:
        print(
            json.dumps(
                {
                    "active": d.bundle.version,
                    "candidate": candidate_bundle.version,
                    "bulletins": len(cases),
                    "changes": [_change_json(c) for c in changes],
                },
                indent=2,
            )
        )
        return 0
    print(
        f"replayed {len(cases)} bulletins: active {d.bundle.version} -> candidate "
        f"{candidate_bundle.version}: {len(changes)} decisions would change"
    )
    for c in changes:
        j = _change_json(c)
        print(
            f"  {j['bulletin_id']}  {j['agency']:<18} {j['old']} -> {j['new']}"
            f"  ({', '.join(j['new_policy_ids']) or 'no grant matched'})"
        )
    return 0


def _change_json(c: Any) -> dict[str, Any]:
    return {
        "bulletin_id": c.bulletin_id,
        "agency": c.agency,
        "old": "PERMIT" if c.old.allowed else "DENY",
        "new": "PERMIT" if c.new.allowed else "DENY",
        "old_policy_ids": list(c.old.policy_ids),
        "new_policy_ids": list(c.new.policy_ids),
    }


def adopt_command(args: argparse.Namespace) -> int:
    data = _open(args)
    registry, d = data.registry, data.directory
    if not Path(args.dir).is_dir():
        active = active_policy_dir(data.settings, registry)
        raise ConfigError(
            f"no policy directory {args.dir}",
            hint=f"start from a copy of the set in force: cp -r {active} {args.dir}; "
            f"edit it, then `istmo policy check {args.dir}`",
        )
    who = operator_name()
    try:
        done = adopt(
            args.dir,
            settings=data.settings,
            registry=registry,
            active=d.bundle,
            adopted_by=who,
            check=d.engine_for,
        )
    except PolicyLoadError as exc:
        raise ConfigError(_problems(exc) + "\nthe active policy set is unchanged") from exc
    print(
        f"adopted policy set {done.version} (was {done.previous}), archived in {done.archived_at}"
    )
    if asyncio.run(notify_running_stack(data.settings, CONTROL_POLICY_SUBJECT)):
        print("the running relay switched to it")
    else:
        print("no running stack for this data directory: it takes effect at the next `istmo up`")
    return 0
