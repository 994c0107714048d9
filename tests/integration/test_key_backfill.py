"""Keys registered before ADR 28 get their entry at a broker's start (the migration path),
once; and the relay's ``key-log`` answer from the stored log checks in the SDK's pure
checks. On SQLite and PostgreSQL (``storage``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from broker.audit.log import AuditLog
from broker.config import Settings
from broker.directory.keylog import backfill_key_entries
from broker.relay.key_log import key_log_reply
from broker.runtime.stack import Stack
from broker.store.registry import (
    AgencyRow,
    EncryptionKeyRow,
    NatsUserRow,
    Registry,
    SigningKeyRow,
)
from schemas.canonical import b64d, b64e
from schemas.keylog import (
    KeyLogRequest,
    KeyLogTrust,
    KeyRef,
    check_key_entry,
    logged_head,
)
from schemas.keys import EncryptionKey, SigningKey
from schemas.natskeys import new_user_seed, user_public_key
from tests.storage_engines import Storage

LOG_KEY = SigningKey(bytes(range(32)))
ORIGIN = "istmo.local/audit"
AGENCIES = ("gt-police", "hn-police", "sv-police")


@pytest.fixture
def db(storage: Storage, tmp_path: Path) -> Iterator[tuple[Registry, AuditLog, Settings]]:
    url = storage.url(tmp_path)
    registry = Registry(url)
    log = AuditLog(url)
    settings = Settings(data_dir=tmp_path, database_url=None if url.startswith("sqlite") else url)
    yield registry, log, settings
    log.close()
    registry.close()


def old_directory(registry: Registry) -> dict[str, EncryptionKey]:
    """Agencies with keys and no key events, as a directory from before ADR 28 is to the
    backfill (its events name no key digest)."""
    keys = {}
    rows: list[object] = []
    for a in AGENCIES:
        sk, ek = SigningKey.generate(), EncryptionKey.generate("X25519")
        keys[a] = ek
        pub = ek.public_key
        rows += [
            AgencyRow(id=a, name=a, sector="police", state=None),
            SigningKeyRow(
                kid=sk.verify_key.kid, agency=a, public=b64e(sk.verify_key.public), created_at=1
            ),
            EncryptionKeyRow(
                kid=pub.kid, agency=a, kem=pub.kem, public=b64e(pub.public), created_at=1
            ),
            NatsUserRow(agency=a, nkey_public=user_public_key(new_user_seed())),
        ]
    registry.record(rows, [])  # type: ignore[arg-type]
    return keys


def integrate(log: AuditLog) -> None:
    while log.integrate(LOG_KEY, ORIGIN, now_ms=1, max_entries=1000):
        pass


def test_old_keys_are_logged_once_and_the_relay_proves_them(
    db: tuple[Registry, AuditLog, Settings],
) -> None:
    registry, log, settings = db
    keys = old_directory(registry)
    assert backfill_key_entries(registry) == 3 * len(AGENCIES)  # signing, encryption, NATS
    assert backfill_key_entries(registry) == 0  # the next start: nothing missing
    integrate(log)

    refs = tuple(KeyRef(agency=a, kid=keys[a].public_key.kid) for a in AGENCIES)
    reply = key_log_reply(settings, "gt-police", KeyLogRequest(keys=refs))
    head = logged_head(reply, KeyLogTrust(LOG_KEY.verify_key, ORIGIN, None, log_key_alone=True))
    assert head is not None
    assert head.size == 3 * len(AGENCIES)
    assert reply.checkpoint is None  # no witnesses here: signed-head mode only
    for a in AGENCIES:
        pub = keys[a].public_key
        found = [
            e
            for item in reply.entries
            if (
                e := check_key_entry(
                    item, head, agency=a, kid=pub.kid, public=pub.public, use="encryption"
                )
            )
        ]
        assert len(found) == 1
        assert found[0].how == "backfill"
        assert found[0].actor == "system"

    # A key written behind the registry's back is logged at the next start, as system's.
    mallory = EncryptionKey.generate("X25519").public_key
    with registry.session() as s:
        s.connection().execute(
            text("UPDATE encryption_key SET kid = :k, public = :p WHERE agency = 'hn-police'"),
            {"k": mallory.kid, "p": b64e(mallory.public)},
        )
        s.commit()
    assert backfill_key_entries(registry) == 1
    integrate(log)
    mine = key_log_reply(settings, "hn-police", KeyLogRequest(mine=True))
    assert len(mine.entries) == 4  # its three keys, and mallory's
    assert mallory.kid.encode() in b64d(mine.entries[-1].leaf, field="leaf", max_bytes=9000)


def test_a_request_names_keys_or_mine(db: tuple[Registry, AuditLog, Settings]) -> None:
    _registry, _log, settings = db
    from schemas.errors import EnvelopeError

    with pytest.raises(EnvelopeError, match="not both"):
        key_log_reply(settings, "gt-police", KeyLogRequest())
    empty = key_log_reply(settings, "gt-police", KeyLogRequest(mine=True))
    assert empty.tree_head is None
    assert empty.entries == ()


def test_a_broker_start_logs_what_is_missing(tmp_path: Path) -> None:
    """``Stack.prepare`` (every ``istmo up``) runs the backfill, and says so only when it
    logged something: a start after keys from before ADR 28, then a start with nothing new."""
    settings = Settings(data_dir=tmp_path / "istmo")
    lines: list[str] = []
    for _start in range(3):
        stack = Stack(settings, out=lines.append)
        stack.prepare(demo=False)
        assert stack.registry is not None
        if _start == 0:
            old_directory(stack.registry)  # keys without entries, as before ADR 28
        stack.registry.close()
    logged = [line for line in lines if line.startswith("keys ")]
    assert logged == [
        f"keys      logged {3 * len(AGENCIES)} key(s) registered before the key log (ADR 28)"
    ]
