"""Keys registered before ADR 28 get a log entry that commits to their key material.

Since ADR 28 every ``key.registered`` event names ``key_sha256``, the digest of the key
bytes, which SDKs check a recipient's key against before sealing. Keys registered before
have events without it (or, for some old directories, none). At each broker start
``backfill_key_entries`` appends, for every key an agency holds now (its current encryption
key, its signing keys not revoked, its NATS user) without an event naming that key id and
digest, a ``key.registered`` event with ``how: "backfill"`` and actor ``system``.

It also logs what it finds, which is the point: a key written into the database behind the
registry's back (a hostile operator, a bad restore) becomes an entry at the next start,
where the agency's monitor (``istmo keys monitor``) alarms on a key it does not hold. Until
then no SDK seals for it: it has no entry.
"""

from __future__ import annotations

import json

from sqlalchemy import text

from broker.audit import events
from broker.clock import SYSTEM_CLOCK, Clock
from broker.store.registry import Registry
from schemas.audit import AuditEvent
from schemas.canonical import b64d
from schemas.errors import EnvelopeError
from schemas.keylog import key_sha256

__all__ = ["backfill_key_entries", "missing_key_entries"]


def _logged(registry: Registry) -> set[tuple[str, str, str]]:
    """(agency, kid, digest) of every ``key.registered`` event naming a digest."""
    out: set[tuple[str, str, str]] = set()
    q = text(
        "SELECT subject, data FROM audit_event "
        "WHERE type = 'key.registered' AND data LIKE '%key_sha256%'"
    )
    with registry.session() as s:
        for subject, data in s.connection().execute(q):
            try:
                d = json.loads(data)
            except ValueError:
                continue
            kid, sha = d.get("kid"), d.get("key_sha256")
            if isinstance(kid, str) and isinstance(sha, str):
                out.add((str(subject), kid, sha))
    return out


def missing_key_entries(registry: Registry, *, at: int) -> list[AuditEvent]:
    """The backfill events the registry's keys call for now (none once all are logged)."""
    logged = _logged(registry)
    signing, encryption = registry.keys_by_agency()
    out: list[AuditEvent] = []

    def need(agency: str, kid: str, use: events.KeyUse, public: bytes, kem: str | None) -> None:
        if (agency, kid, key_sha256(public)) not in logged:
            out.append(
                events.key_registered(
                    agency, kid, use, at=at, actor="system", kem=kem, public=public, how="backfill"
                )
            )

    nats = {row.agency: row.nkey_public for row in registry.nats_users()}
    for agency in registry.agencies():
        if agency.status == "revoked":
            continue
        for sk in signing.get(agency.id, []):
            if sk.revoked_at is None:
                need(agency.id, sk.kid, "signing", _raw(sk.public), None)
        for ek in encryption.get(agency.id, []):
            if ek.current:
                need(agency.id, ek.kid, "encryption", _raw(ek.public), ek.kem)
        if agency.id in nats:
            need(agency.id, nats[agency.id], "nats", nats[agency.id].encode(), None)
    return out


def _raw(public: str) -> bytes:
    try:
        return b64d(public, field="public key", max_bytes=4096)
    except EnvelopeError:
        return public.encode()  # a hand-edited row: logged as it is, for the monitor to see


def backfill_key_entries(registry: Registry, *, clock: Clock = SYSTEM_CLOCK) -> int:
    """Append the events ``missing_key_entries`` names; returns how many.

    Raises:
        AuditStoreError: the database refused (nothing appended).
    """
    missing = missing_key_entries(registry, at=clock.now_ms())
    if missing:
        registry.record([], missing)
    return len(missing)
