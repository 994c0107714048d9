"""Keys in the audit log (ADR 28): the pure checks an SDK makes before sealing for a key
(schemas.keylog.logged_head, check_key_entry), the agency monitor's judgement
(own_key_alarms, clients.key_log.monitor_own_keys) and the SDK's cache and retries
(clients.key_log.KeyLogCheck with a fake ``ask``: no broker)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.audit import merkle
from broker.audit.events import key_registered, key_rotated
from broker.audit.log import entry_bytes
from clients.key_log import KeyLogCheck, load_key_log_trust, monitor_own_keys
from schemas.canonical import b64e
from schemas.checkpoint import (
    COSIGNATURE_ALG,
    Checkpoint,
    CosignerKey,
    WitnessEndpoint,
    WitnessTrust,
    cosign,
    sign_checkpoint,
)
from schemas.directory import AgencyRecord, EncryptionKeyRecord
from schemas.errors import ConfigError, SignatureError
from schemas.keylog import (
    KeyEntry,
    KeyLogProof,
    KeyLogReply,
    KeyLogRequest,
    KeyLogTrust,
    KeyNotLogged,
    KeyNotWitnessedYet,
    LoggedHead,
    OwnKey,
    check_key_entry,
    key_sha256,
    logged_head,
    own_key_alarms,
)
from schemas.keys import EncryptionKey, SigningKey
from schemas.keystore import new_keystore
from schemas.merkle_verify import leaf_hash
from schemas.treehead import SignedTreeHead, TreeHead, sign_tree_head

ORIGIN = "istmo.test/audit"
LOG = SigningKey(bytes(range(32)))
WITNESSES = [SigningKey(bytes([i]) * 32) for i in (7, 8, 9)]
NAMES = ["witness.a", "witness.b", "witness.c"]
TRUST = WitnessTrust(
    tuple(
        WitnessEndpoint(CosignerKey(n, w.verify_key, COSIGNATURE_ALG))
        for n, w in zip(NAMES, WITNESSES, strict=True)
    ),
    2,
)
WITNESSED = KeyLogTrust(LOG.verify_key, ORIGIN, TRUST)
SIGNED_HEAD = KeyLogTrust(LOG.verify_key, ORIGIN, None, log_key_alone=True)
EK = EncryptionKey.generate("X25519").public_key
OTHER = EncryptionKey.generate("X25519").public_key


def _leaf(agency: str, kid: str, public: bytes | None, *, use: str = "encryption") -> bytes:
    return entry_bytes(key_registered(agency, kid, use, at=1, actor=agency, public=public))  # type: ignore[arg-type]


@dataclasses.dataclass
class Log:
    """A small log in memory: leaves, the tree, and what a key-log answer would carry."""

    leaves: list[bytes]
    store: merkle.MemoryHashStore = dataclasses.field(default_factory=merkle.MemoryHashStore)

    def __post_init__(self) -> None:
        self.store.append(leaf_hash(x) for x in self.leaves)

    def root(self, size: int | None = None) -> bytes:
        return merkle.root(self.store, size or len(self.leaves))

    def proof(self, index: int, size: int | None = None) -> KeyLogProof:
        size = size or len(self.leaves)
        return KeyLogProof(
            index=index,
            tree_size=size,
            leaf=b64e(self.leaves[index]),
            proof=tuple(b64e(p) for p in merkle.inclusion_proof(self.store, index, size)),
        )

    def head(self, size: int | None = None, key: SigningKey = LOG) -> SignedTreeHead:
        size = size or len(self.leaves)
        return sign_tree_head(
            TreeHead(
                v=1, origin=ORIGIN, tree_size=size, root_hash=b64e(self.root(size)), timestamp=1
            ),
            key,
        )

    def checkpoint(self, size: int | None = None, cosigners: tuple[int, ...] = (0, 1)) -> str:
        size = size or len(self.leaves)
        note = sign_checkpoint(Checkpoint(ORIGIN, size, self.root(size)), LOG)
        sigs = [cosign(note.body, NAMES[i], WITNESSES[i], 1_767_225_600) for i in cosigners]
        return note.with_signatures(sigs).encode().decode()


FILLER = entry_bytes(
    key_rotated(
        "gt-police",
        old_kid="sig-" + "a" * 32,
        new_kid="sig-" + "b" * 32,
        encryption_kid=EK.kid,
        at=1,
    )
)
LOG4 = Log(
    [
        FILLER,
        _leaf("rc-drugs", EK.kid, EK.public),
        FILLER,
        _leaf("sv-police", OTHER.kid, OTHER.public),
    ]
)


# ---------------------------------------------------------------------- the verified head
@pytest.mark.parametrize(
    ("trust", "reply", "size", "error"),
    [
        (WITNESSED, dict(checkpoint=LOG4.checkpoint()), 4, None),
        (WITNESSED, dict(checkpoint=LOG4.checkpoint(cosigners=(0, 1, 2))), 4, None),
        (WITNESSED, dict(checkpoint=LOG4.checkpoint(cosigners=(2,))), None, "quorum_missing"),
        (WITNESSED, dict(checkpoint=None, tree_head=LOG4.head()), None, None),  # no checkpoint yet
        (WITNESSED, dict(checkpoint="not a note"), None, "key_log_untrusted"),
        (SIGNED_HEAD, dict(tree_head=LOG4.head()), 4, None),
        (SIGNED_HEAD, dict(tree_head=None), None, None),
        (SIGNED_HEAD, dict(tree_head=LOG4.head(key=WITNESSES[0])), None, "key_log_untrusted"),
    ],
)
def test_logged_head(trust: KeyLogTrust, reply: dict, size: int | None, error: str | None) -> None:
    answer = KeyLogReply(
        v=1, checkpoint=reply.get("checkpoint"), tree_head=reply.get("tree_head"), entries=()
    )
    if error:
        with pytest.raises(SignatureError) as caught:
            logged_head(answer, trust)
        assert caught.value.code == error
        return
    head = logged_head(answer, trust)
    assert (head and head.size) == size
    if head is not None:
        assert head.root == LOG4.root()
        assert head.witnessed == (trust is WITNESSED)


# ---------------------------------------------------------------------- one entry
HEAD4 = LoggedHead(4, LOG4.root(), True)


def _tamper(item: KeyLogProof, **kw: object) -> KeyLogProof:
    return item.model_copy(update=kw)


GOOD = LOG4.proof(1)
CASES: list[tuple[str, KeyLogProof, dict, type[Exception] | None]] = [
    ("the entry proves the key", GOOD, {}, None),
    ("another agency's entry is not about this key", LOG4.proof(3), {}, None),
    ("not a key entry", LOG4.proof(0), {}, None),
    ("other key material under the same id", GOOD, {"public": OTHER.public}, KeyNotLogged),
    ("another agency asking", GOOD, {"agency": "sv-police"}, None),
    ("a signing key is not an encryption key", GOOD, {"use": "signing"}, None),
    ("a wrong sibling", _tamper(GOOD, proof=(b64e(bytes(32)), *GOOD.proof[1:])), {}, KeyNotLogged),
    ("a short proof", _tamper(GOOD, proof=GOOD.proof[:-1]), {}, KeyNotLogged),
    ("the leaf at another index", _tamper(GOOD, index=2), {}, KeyNotLogged),
    ("proven in a newer tree than checked", _tamper(GOOD, tree_size=5), {}, KeyNotWitnessedYet),
    ("not canonical bytes", _tamper(GOOD, leaf=b64e(b" " + LOG4.leaves[1])), {}, KeyNotLogged),
    (
        "an entry from before ADR 28 (no digest)",
        Log([_leaf("rc-drugs", EK.kid, None)]).proof(0),
        {},
        None,
    ),
]


@pytest.mark.parametrize(("what", "item", "change", "error"), CASES, ids=[c[0] for c in CASES])
def test_check_key_entry(
    what: str, item: KeyLogProof, change: dict, error: type[Exception] | None
) -> None:
    head = HEAD4
    if what.startswith("an entry from before"):
        one = Log([_leaf("rc-drugs", EK.kid, None)])
        head = LoggedHead(1, one.root(), True)
    args = {"agency": "rc-drugs", "kid": EK.kid, "public": EK.public, "use": "encryption"} | change
    if error is not None:
        with pytest.raises(error):
            check_key_entry(item, head, **args)
        return
    entry = check_key_entry(item, head, **args)
    if what == "the entry proves the key":
        assert entry is not None
        assert entry.index == 1
        assert entry.sha256 == key_sha256(EK.public)
    else:
        assert entry is None


# ---------------------------------------------------------------------- the monitor
SK = SigningKey(bytes([3]) * 32).verify_key


@pytest.mark.parametrize(
    ("entry", "alarm"),
    [
        (
            KeyEntry(1, "rc-drugs", EK.kid, "encryption", key_sha256(EK.public), "rc-drugs", None),
            None,
        ),
        (KeyEntry(1, "rc-drugs", SK.kid, "signing", key_sha256(SK.public), "rc-drugs", None), None),
        (KeyEntry(1, "rc-drugs", SK.kid, "signing", None, "rc-drugs", None), None),  # before ADR 28
        (KeyEntry(1, "sv-police", OTHER.kid, "encryption", "x", "sv-police", None), None),
        (
            KeyEntry(
                7,
                "rc-drugs",
                OTHER.kid,
                "encryption",
                key_sha256(OTHER.public),
                "system",
                "backfill",
            ),
            "entry 7: encryption key "
            + OTHER.kid
            + " registered to rc-drugs by system (backfill) is not in this keystore",
        ),
        (
            KeyEntry(
                8, "rc-drugs", EK.kid, "encryption", key_sha256(OTHER.public), "rc-drugs", None
            ),
            "entry 8: encryption key " + EK.kid + " registered to rc-drugs with other key material",
        ),
        (KeyEntry(9, "rc-drugs", "UABC", "nats", "x", "rc-drugs", None), None),  # no NATS key given
    ],
)
def test_own_key_alarms(entry: KeyEntry, alarm: str | None) -> None:
    own = [OwnKey(EK.kid, "encryption", EK.public), OwnKey(SK.kid, "signing", SK.public)]
    got = own_key_alarms("rc-drugs", [entry], own)
    if alarm is None:
        assert got == []
    else:
        assert len(got) == 1
        assert got[0].startswith(alarm)


def test_the_monitor_proves_its_entries_and_alarms_on_a_stranger_key() -> None:
    ks, _sk, ek = new_keystore(
        agency="rc-drugs", nats_seed="SU" + "A" * 56, directory_key=LOG.verify_key, now=1
    )
    mine = _leaf("rc-drugs", ek.public_key.kid, ek.public_key.public)
    stranger = entry_bytes(
        key_registered(
            "rc-drugs",
            OTHER.kid,
            "encryption",
            at=2,
            actor="system",
            public=OTHER.public,
            how="backfill",
        )
    )
    log = Log([FILLER, mine, stranger])
    reply = KeyLogReply(
        v=1,
        checkpoint=log.checkpoint(2),
        tree_head=log.head(),
        entries=(log.proof(1, 2), log.proof(2)),
    )
    report = monitor_own_keys(ks, reply, WITNESSED)
    assert report.proven == 1
    assert report.size == 2
    assert report.unproven == ["entry 2: not under the checkpoint yet"]
    assert len(report.alarms) == 1
    assert OTHER.kid in report.alarms[0]
    assert "(backfill)" in report.alarms[0]
    # Signed-head mode: both proven; the alarm stands.
    both = reply.model_copy(update={"entries": (log.proof(1), log.proof(2))})
    report = monitor_own_keys(ks, both, SIGNED_HEAD)
    assert report.proven == 2
    assert len(report.alarms) == 1


# ---------------------------------------------------------------------- the SDK's check
def _record(agency: str, key: object) -> AgencyRecord:
    return AgencyRecord(
        id=agency,
        name=agency,
        state=None,
        sector="police",
        status="active",
        encryption_key=EncryptionKeyRecord(
            kid=key.kid, kem=key.kem, public=b64e(key.public), created_at=1
        ),  # type: ignore[attr-defined]
    )


def _asker(replies: list[Callable[[KeyLogRequest], KeyLogReply]]) -> Callable:
    async def ask(req: KeyLogRequest) -> KeyLogReply:
        return replies.pop(0)(req) if len(replies) > 1 else replies[0](req)

    return ask


async def _no_sleep(_s: float) -> None:
    return None


def test_the_sdk_checks_once_then_keeps_the_key() -> None:
    reply = KeyLogReply(
        v=1,
        checkpoint=LOG4.checkpoint(),
        tree_head=LOG4.head(),
        entries=(LOG4.proof(1), LOG4.proof(3)),
    )
    check = KeyLogCheck(WITNESSED, _asker([lambda _r: reply]), sleep=_no_sleep)
    records = [_record("rc-drugs", EK), _record("sv-police", OTHER)]
    asyncio.run(check.check(records))
    asyncio.run(check.check(records))
    assert check.asked == 1
    assert check.checked(records[0]) == 1
    assert check.checked(records[1]) == 3


def test_the_sdk_waits_for_a_new_key_to_be_witnessed() -> None:
    # First the entry is only under the tree head; then under the checkpoint.
    early = KeyLogReply(
        v=1, checkpoint=LOG4.checkpoint(1), tree_head=LOG4.head(), entries=(LOG4.proof(1),)
    )
    late = KeyLogReply(
        v=1, checkpoint=LOG4.checkpoint(), tree_head=LOG4.head(), entries=(LOG4.proof(1),)
    )
    check = KeyLogCheck(WITNESSED, _asker([lambda _r: early, lambda _r: late]), sleep=_no_sleep)
    asyncio.run(check.check([_record("rc-drugs", EK)]))
    assert check.asked == 2


@pytest.mark.parametrize(
    ("entries", "asked", "message"),
    [
        ((), 5, "no registration entry in the log up to size 4 (yet)"),  # asked 5 times
        ((LOG4.proof(3),), 5, "no registration entry"),
        (
            (_tamper(LOG4.proof(1), proof=(b64e(bytes(32)), *LOG4.proof(1).proof[1:])),),
            1,
            "inclusion proof",
        ),
    ],
)
def test_the_sdk_refuses_a_key_not_in_the_log(entries: tuple, asked: int, message: str) -> None:
    reply = KeyLogReply(v=1, checkpoint=LOG4.checkpoint(), tree_head=LOG4.head(), entries=entries)
    check = KeyLogCheck(WITNESSED, _asker([lambda _r: reply]), sleep=_no_sleep)
    with pytest.raises(KeyNotLogged, match="refused to seal for 1 recipient") as caught:
        asyncio.run(check.check([_record("rc-drugs", EK)]))
    assert message in str(caught.value)
    assert caught.value.code == "key_not_logged"
    assert check.asked == asked


def test_the_substituted_key_is_refused_at_once() -> None:
    # The directory serves OTHER under rc-drugs; the log has rc-drugs' real key only.
    reply = KeyLogReply(
        v=1, checkpoint=LOG4.checkpoint(), tree_head=LOG4.head(), entries=(LOG4.proof(1),)
    )
    check = KeyLogCheck(WITNESSED, _asker([lambda _r: reply]), sleep=_no_sleep)
    fake = _record("rc-drugs", OTHER)
    with pytest.raises(KeyNotLogged):
        asyncio.run(check.check([fake]))


def test_no_trust_checks_nothing() -> None:
    async def never(_r: KeyLogRequest) -> KeyLogReply:
        raise AssertionError("asked")

    asyncio.run(KeyLogCheck(None, never).check([_record("rc-drugs", OTHER)]))


def test_key_entries_commit_to_the_key_material() -> None:
    event = key_registered(
        "rc-drugs", EK.kid, "encryption", at=1, actor="rc-drugs", kem="X25519", public=EK.public
    )
    assert event.event_id == f"key:{EK.kid}"
    assert event.data["key_sha256"] == key_sha256(EK.public)
    backfill = key_registered(
        "rc-drugs", EK.kid, "encryption", at=1, actor="system", public=EK.public, how="backfill"
    )
    assert backfill.event_id.startswith(f"key-backfill:{EK.kid}:")
    assert backfill.data["how"] == "backfill"


def test_an_upgraded_broker_s_old_entry_waits_for_its_backfill() -> None:
    # Entry 0 from before ADR 28 (no digest) is witnessed; its backfill is not yet.
    old = _leaf("rc-drugs", EK.kid, None)
    backfill = entry_bytes(
        key_registered(
            "rc-drugs", EK.kid, "encryption", at=2, actor="system", public=EK.public, how="backfill"
        )
    )
    log = Log([old, backfill])
    early = KeyLogReply(
        v=1,
        checkpoint=log.checkpoint(1),
        tree_head=log.head(),
        entries=(log.proof(0, 1), log.proof(1)),
    )
    late = KeyLogReply(
        v=1, checkpoint=log.checkpoint(), tree_head=log.head(), entries=(log.proof(0), log.proof(1))
    )
    check = KeyLogCheck(WITNESSED, _asker([lambda _r: early, lambda _r: late]), sleep=_no_sleep)
    record = _record("rc-drugs", EK)
    asyncio.run(check.check([record]))
    assert check.asked == 2
    assert check.checked(record) == 1


def test_a_key_log_trust_without_witnesses_must_say_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="log_key_alone=True"):
        KeyLogTrust(LOG.verify_key, ORIGIN, None)
    with pytest.raises(ValueError, match="cannot also be log_key_alone"):
        KeyLogTrust(LOG.verify_key, ORIGIN, TRUST, log_key_alone=True)
    path = tmp_path / "key-log.json"
    doc: dict[str, object] = {"log_key": b64e(LOG.verify_key.public), "witnesses": []}
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="names no witnesses") as exc:
        load_key_log_trust(path)
    assert exc.value.code == "witnesses_required"
    assert "trust_log_key_alone" in (exc.value.hint or "")
    path.write_text(json.dumps({**doc, "trust_log_key_alone": True}))
    trust = load_key_log_trust(path)
    assert (trust.mode, trust.log_key_alone) == ("signed-head", True)
    path.write_text(json.dumps({**doc, "trust_log_key_alone": "yes"}))
    with pytest.raises(ConfigError, match="not true or false"):
        load_key_log_trust(path)
