"""The relay's decision (``broker.relay.plan``) as a table: no NATS, no database, no clock.

Real parts only: the ``policies/`` bundle and its Cedar engine over a small directory,
envelopes sealed and signed with real keys. The directory view is a fake of the
``DirectoryView`` port (what ``DirectoryService`` offers the relay), built in memory.

Directory: SICA = GT, SV, HN, BZ; CARICOM = BZ, JM. Every agency follows drug-trafficking.
The default bulletin is gt-police's, CONFIDENTIAL, TLP:AMBER, releasable to SICA,
addressed to the three agencies the policy lets receive it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from broker.audit import events
from broker.policy.engine import (
    AgencyInfo,
    DirectorySnapshot,
    JurisdictionInfo,
    PolicyBundle,
    PolicyEngine,
)
from broker.relay.checks import IngestLimits
from broker.relay.decisions import DEFAULT_DENY
from broker.relay.plan import (
    MAX_DEFER_S,
    DirectoryView,
    Ingested,
    Plan,
    Prior,
    parse,
    plan,
    plan_batch,
)
from broker.store.registry import BulletinRow, DecisionRecordRow, Insert, RejectionRow
from schemas.canonical import b64d, b64e
from schemas.directory import AgencyRecord, EncryptionKeyRecord, SigningKeyRecord
from schemas.envelope import Content, Envelope
from schemas.ids import AgencyId, BulletinId
from schemas.keys import EncryptionKey, EncryptionPublicKey, SigningKey
from schemas.labels import Classification, Labels, Precedence, Tlp
from schemas.sealing import encode_envelope, envelope_digest, seal
from schemas.subjects import gated_subject

POLICIES = Path(__file__).resolve().parents[2] / "policies"
NOW = 1_780_000_000  # epoch seconds of every decision unless a case says otherwise
NOW_MS = NOW * 1000 + 250
DRUGS = "drug-trafficking"
LIMITS = IngestLimits(max_envelope_bytes=64 * 1024, max_clock_skew_s=120)
REVOKED_AT = NOW - 60  # sv-military's first signing key is revoked from then on

JURISDICTIONS = (
    JurisdictionInfo("SICA", "community", "Central American Integration System", ()),
    JurisdictionInfo("CARICOM", "community", "Caribbean Community", ()),
    JurisdictionInfo("GT", "state", "Guatemala", ("SICA",)),
    JurisdictionInfo("SV", "state", "El Salvador", ("SICA",)),
    JurisdictionInfo("HN", "state", "Honduras", ("SICA",)),
    JurisdictionInfo("BZ", "state", "Belize", ("SICA", "CARICOM")),
    JurisdictionInfo("JM", "state", "Jamaica", ("CARICOM",)),
)


def _info(
    aid: str, sector: str = "police", clearance: int = 2, status: str = "active"
) -> AgencyInfo:
    communities = ("SICA",) if sector == "auditor" else ()
    state = None if communities else aid.split("-")[0].upper()
    return AgencyInfo(aid, aid, sector, status, clearance, frozenset({DRUGS}), state, communities)


INFOS = (
    _info("gt-police"),
    _info("gt-justice", "justice", clearance=1),  # RESTRICTED: below CONFIDENTIAL
    _info("sv-police"),
    _info("sv-military", "military", clearance=3),
    _info("hn-police", status="suspended"),
    _info("bz-police"),
    _info("jm-police"),  # CARICOM only: nothing grants it a SICA bulletin
    _info("sica-audit", "auditor", clearance=3),
)


@dataclass(frozen=True)
class Party:
    """An agency's keys: what its keystore holds."""

    signing: SigningKey
    encryption: EncryptionKey
    revoked: SigningKey | None = None  # an earlier signing key, revoked at REVOKED_AT

    def record(self, info: AgencyInfo, revoked_at: int | None = None) -> AgencyRecord:
        keys = [self.revoked] if self.revoked else []
        signing = tuple(
            SigningKeyRecord(
                kid=k.verify_key.kid,
                public=b64e(k.verify_key.public),
                created_at=NOW - 86400,
                revoked_at=revoked_at if k is self.revoked else None,
            )
            for k in [*keys, self.signing]
        )
        pub = self.encryption.public_key
        return AgencyRecord(
            id=info.id,
            name=info.name,
            state=info.state,
            communities=info.communities,
            sector=info.sector,
            status=info.status,
            signing_keys=signing,
            encryption_key=EncryptionKeyRecord(
                kid=pub.kid, kem=pub.kem, public=b64e(pub.public), created_at=NOW - 86400
            ),
        )


PARTIES = {
    a.id: Party(
        SigningKey.generate(),
        EncryptionKey.generate(),
        revoked=SigningKey.generate() if a.id == "sv-military" else None,
    )
    for a in INFOS
}


@dataclass(frozen=True)
class MemoryDirectory:
    """The ``DirectoryView`` port over in-memory records and a real policy engine."""

    records: Mapping[str, AgencyRecord]
    states: frozenset[str]
    engine: PolicyEngine
    subscribers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def candidates(self, topic: str, named: tuple[str, ...]) -> list[str]:
        found = set(self.subscribers.get(topic, ())) | {n for n in named if n in self.records}
        return sorted(found)


def _directory(revoked_at: int = REVOKED_AT) -> MemoryDirectory:
    bundle = PolicyBundle.load(POLICIES)
    engine = PolicyEngine(bundle, DirectorySnapshot.build(JURISDICTIONS, INFOS, bundle))
    return MemoryDirectory(
        records={a.id: PARTIES[a.id].record(a, revoked_at) for a in INFOS},
        states=frozenset(j.code for j in JURISDICTIONS),
        engine=engine,
        subscribers={DRUGS: tuple(sorted(a.id for a in INFOS))},
    )


DIRECTORY: DirectoryView = _directory()

LABELS = Labels(
    topic=DRUGS, classification=Classification.CONFIDENTIAL, tlp=Tlp.AMBER, rel_to=("SICA",)
)
PERMITTED = ("bz-police", "sv-military", "sv-police")  # SICA, cleared, active, not auditors


def keys_of(*agencies: str) -> dict[AgencyId, EncryptionPublicKey]:
    return {AgencyId(a): PARTIES[a].encryption.public_key for a in agencies}


def sealed(
    originator: str = "gt-police",
    *,
    labels: Labels = LABELS,
    to: tuple[str, ...] = PERMITTED,
    signing_key: SigningKey | None = None,
    created_at: int = NOW,
    **kw: Any,
) -> Envelope:
    recipients = kw.pop("recipients", None) or keys_of(*to)
    return seal(
        content=Content(title="canary title", text="canary body"),
        labels=labels,
        originator=AgencyId(originator),
        signing_key=signing_key or PARTIES[originator].signing,
        recipients=recipients,
        now=created_at,
        **kw,
    )


def ingested(
    env: Envelope | bytes, *, sender: str = "gt-police", seq: int = 7, stored_at: int = NOW
) -> Ingested:
    raw = env if isinstance(env, bytes) else encode_envelope(env)
    return Ingested(raw=raw, subject=gated_subject("ingest", sender), seq=seq, stored_at=stored_at)


def decide(
    msg: Ingested,
    *,
    prior: Prior | None = None,
    now: int = NOW,
    directory: DirectoryView = DIRECTORY,
) -> Plan:
    return plan(
        msg,
        parse(msg, LIMITS),
        directory=directory,
        limits=LIMITS,
        prior=prior,
        now_ms=now * 1000 + 250,
    )


def values_of(row: object, table: type[Any]) -> Mapping[str, Any]:
    """The column values of a plan's row of ``table`` (plain values, no ORM object)."""
    assert isinstance(row, Insert)
    assert row.table is table
    return row.values


def flip_ct(env: Envelope) -> Envelope:
    ct = bytearray(b64d(env.body.ct, field="ct", max_bytes=10**6))
    ct[0] ^= 1
    return env.model_copy(update={"body": env.body.model_copy(update={"ct": b64e(bytes(ct))})})


# --------------------------------------------------------------------------- accept


def test_accept_delivers_to_the_permitted_recipients_and_records_every_decision() -> None:
    env = sealed()
    p = decide(ingested(env))
    bid = env.header.bulletin_id
    assert (p.verdict, p.bulletin_id, p.reason, p.sender) == ("accept", bid, None, "gt-police")
    assert p.deliver_to == PERMITTED
    assert p.addressed == PERMITTED
    # Every agency that follows the topic was decided, except the originator.
    assert [d.agency for d in p.decisions] == sorted(a.id for a in INFOS if a.id != "gt-police")
    row, record = (values_of(p.rows[0], BulletinRow), values_of(p.rows[1], DecisionRecordRow))
    assert (row["id"], row["ingest_seq"], row["accepted_at"]) == (bid, 7, NOW)
    assert row["envelope_digest"] == envelope_digest(env)
    assert row["recipients"] == ",".join(PERMITTED)
    # One decision record and one decided event for the bulletin, not one per candidate.
    assert (record["bulletin_id"], record["routed"]) == (bid, ",".join(PERMITTED))
    assert [(e.type, e.event_id) for e in p.events] == [
        ("bulletin.accepted", f"{bid}:accepted"),
        ("bulletin.decided", f"{bid}:decided:1"),
    ]
    decided = p.events[1]
    assert (decided.subject, decided.bulletin_id, decided.actor) == (bid, bid, "relay")
    assert (decided.data["part"], decided.data["parts"]) == (1, 1)
    # Who got it first, then the denials by code and deciding policies.
    assert [(g.outcome, g.policy_ids, g.agencies) for g in events.decided_groups(decided.data)] == [
        ("routed", ("grant.releasable",), PERMITTED),
        ("default_deny", (), ("jm-police",)),
        ("policy_deny", ("guard.agency-suspended",), ("hn-police",)),
        ("policy_deny", ("guard.auditor-no-content",), ("sica-audit",)),
        ("policy_deny", ("guard.clearance",), ("gt-justice",)),
    ]
    # The time is the one passed in; the relay's clock is not read here.
    assert {e.time for e in p.events} == {NOW_MS}
    accepted = p.events[0]
    assert accepted.data["envelope_digest"] == envelope_digest(env)
    assert accepted.data["recipients"] == PERMITTED
    assert accepted.data["policy_ids"] == ("grant.publish-own",)
    assert p.claim == Prior(7, envelope_digest(env))
    # Whom the policy refused it, for their withheld counts: who, not why.
    assert p.withheld_from == ("gt-justice", "hn-police", "jm-police", "sica-audit")


DENIALS = [
    # agency, code, deciding policies
    ("gt-justice", "policy_deny", ("guard.clearance",)),
    ("hn-police", "policy_deny", ("guard.agency-suspended",)),
    ("jm-police", "default_deny", ()),
    ("sica-audit", "policy_deny", ("guard.auditor-no-content",)),
]


@pytest.mark.parametrize(("agency", "code", "policy_ids"), DENIALS, ids=[d[0] for d in DENIALS])
def test_each_denial_names_its_reason(agency: str, code: str, policy_ids: tuple[str, ...]) -> None:
    p = decide(ingested(sealed()))
    denial = {d.agency: d for d in p.denials}[agency]
    assert (denial.code, denial.policy_ids) == (code, policy_ids)
    # The audit event says who was refused, with the code and the deciding policies ...
    (decided,) = [e for e in p.events if e.type == "bulletin.decided"]
    (group,) = [g for g in events.decided_groups(decided.data) if agency in g.agencies]
    assert (group.outcome, group.policy_ids) == (code, policy_ids)
    # ... and the decision record also keeps the reasons' texts.
    record = values_of(p.rows[1], DecisionRecordRow)
    (kept,) = [g for g in json.loads(record["groups"]) if agency in g["agencies"]]
    assert (kept["outcome"], tuple(kept["policy_ids"])) == (code, policy_ids)
    assert kept["reasons"] == list(denial.reasons)


def test_a_default_deny_says_so_rather_than_nothing() -> None:
    p = decide(ingested(sealed()))
    (default,) = [d for d in p.denials if d.code == "default_deny"]
    assert default.reasons == (DEFAULT_DENY,)
    assert default.policy_ids == ()


def test_an_addressed_agency_the_policy_refuses_is_denied_not_delivered() -> None:
    # The publisher wrapped for suspended hn-police too: the policy decides, not the wraps.
    p = decide(ingested(sealed(to=(*PERMITTED, "hn-police"))))
    assert p.verdict == "accept"
    assert "hn-police" not in p.deliver_to
    assert "hn-police" in p.addressed
    assert "hn-police" in {d.agency for d in p.denials}


def test_an_allowed_agency_not_addressed_gets_nothing_and_is_recorded_as_such() -> None:
    p = decide(ingested(sealed(to=("sv-police",))))
    assert p.deliver_to == ("sv-police",)
    allowed = {d.agency for d in p.decisions if d.allowed}
    assert allowed == set(PERMITTED)
    decided = events.decided_groups(p.events[1].data)
    assert [(g.outcome, g.agencies) for g in decided[:2]] == [
        ("routed", ("sv-police",)),
        ("unaddressed", ("bz-police", "sv-military")),
    ]
    # The policy allowed them: nothing was withheld from them by the policy.
    assert not {"bz-police", "sv-military"} & set(p.withheld_from)


def test_the_originator_is_decided_only_when_it_addressed_itself() -> None:
    p = decide(ingested(sealed(to=(*PERMITTED, "gt-police"))))
    assert "gt-police" in [d.agency for d in p.decisions]
    assert "gt-police" in p.deliver_to


def test_precedence_ranks_the_delivery() -> None:
    flash = LABELS.model_copy(update={"precedence": Precedence.FLASH})
    assert decide(ingested(sealed(labels=flash))).rank == 0
    assert decide(ingested(sealed())).rank == list(Precedence).index(Precedence.ROUTINE)


# --------------------------------------------------------------------------- reject

_FRESH_KEY = SigningKey.generate()  # registered to no one

REJECTS: list[tuple[str, Any, str]] = [
    # name, how to make the message, refusal code
    ("bad-signature", lambda: ingested(flip_ct(sealed())), "signature_invalid"),
    (
        "unregistered-key",
        lambda: ingested(sealed(signing_key=_FRESH_KEY)),
        "key_not_bound_to_sender",
    ),
    (
        "revoked-key",
        lambda: ingested(
            sealed("sv-military", signing_key=PARTIES["sv-military"].revoked),
            sender="sv-military",
        ),
        "key_revoked",
    ),
    (
        "unknown-agency",
        lambda: ingested(sealed("zz-police", signing_key=_FRESH_KEY), sender="zz-police"),
        "unknown_agency",
    ),
    (
        "originator-not-the-sender",
        lambda: ingested(sealed("sv-police", signing_key=PARTIES["sv-police"].signing)),
        "originator_mismatch",
    ),
    ("clock-skew-past", lambda: ingested(sealed(created_at=NOW - 1000)), "timestamp_out_of_window"),
    (
        "clock-skew-future",
        lambda: ingested(sealed(created_at=NOW + 3600)),
        "timestamp_out_of_window",
    ),
    (
        "expired",
        lambda: ingested(sealed(created_at=NOW - 60, expires_at=NOW - 1)),
        "expired",
    ),
    (
        "unknown-jurisdiction",
        lambda: ingested(sealed(labels=LABELS.model_copy(update={"rel_to": ("SICA", "XX")}))),
        "unknown_label",
    ),
    (
        "names-an-unknown-agency",
        lambda: ingested(sealed(labels=LABELS.model_copy(update={"named": ("zz-nobody",)}))),
        "unknown_recipient",
    ),
    (
        "wrap-for-an-unknown-agency",
        lambda: ingested(
            sealed(
                recipients={
                    **keys_of(*PERMITTED),
                    AgencyId("zz-nobody"): EncryptionKey.generate().public_key,
                }
            )
        ),
        "unknown_recipient",
    ),
    (
        "wrap-under-an-old-key",
        lambda: ingested(
            sealed(
                recipients={
                    **keys_of("bz-police", "sv-military"),
                    AgencyId("sv-police"): EncryptionKey.generate().public_key,
                }
            )
        ),
        "recipient_key_unknown",
    ),
    (
        "publish-above-its-clearance",
        lambda: ingested(sealed("gt-justice"), sender="gt-justice"),
        "policy_deny",
    ),
    (
        "publish-while-suspended",
        lambda: ingested(sealed("hn-police"), sender="hn-police"),
        "policy_deny",
    ),
    ("not-json", lambda: ingested(b"not json"), "malformed"),
    ("duplicate-keys", lambda: ingested(b'{"v":1,"v":2}'), "malformed"),
    ("unknown-version", lambda: ingested(b'{"v":2}'), "unsupported_version"),
    ("deep-nesting", lambda: ingested(b"[" * 5000 + b"]" * 5000), "malformed"),
    ("oversized", lambda: ingested(b'{"v":1,"pad":"' + b"A" * 70_000 + b'"}'), "oversized"),
]


@pytest.mark.parametrize(("name", "make", "code"), REJECTS, ids=[r[0] for r in REJECTS])
def test_rejected_with_its_code_a_row_and_an_event(name: str, make: Any, code: str) -> None:
    msg: Ingested = make()
    p = decide(msg)
    assert (p.verdict, p.reason) == ("reject", code), p.message
    assert p.deliver_to == ()
    assert p.decisions == ()
    (row,) = p.rows
    assert isinstance(row, RejectionRow)
    (event,) = p.events
    sender = msg.subject.rsplit(".", 1)[1]
    assert (row.ingest_seq, row.originator, row.reason, row.time) == (7, sender, code, NOW)
    assert row.bulletin_id == p.bulletin_id
    assert event.event_id == "ingest:7:rejected"
    assert (event.type, event.actor, event.reason, event.time) == (
        "bulletin.rejected",
        sender,
        code,
        NOW_MS,
    )
    assert event.data["size"] == len(msg.raw)
    assert event.data["ingest_seq"] == 7
    # Metadata only: no payload, and never the content.
    assert "AAAA" not in str(event.data)
    assert "canary" not in str(event.data) + row.message


def test_the_refusal_names_what_is_wrong() -> None:
    stranger = {AgencyId("zz-nobody"): EncryptionKey.generate().public_key}
    p = decide(ingested(sealed(recipients={**keys_of(*PERMITTED), **stranger})))
    assert p.message == "wrap list names unknown agency zz-nobody"


def test_a_message_that_does_not_parse_is_filed_under_its_sequence() -> None:
    p = decide(ingested(b"not json", seq=41))
    assert p.bulletin_id is None
    assert p.events[0].subject == "ingest:41"
    assert p.events[0].bulletin_id is None


def test_a_rejection_after_parsing_is_filed_under_the_bulletin_id() -> None:
    env = flip_ct(sealed())
    p = decide(ingested(env))
    assert p.bulletin_id == env.header.bulletin_id
    assert p.events[0].subject == env.header.bulletin_id


def test_a_subject_that_names_no_agency_is_from_unknown() -> None:
    msg = Ingested(raw=b"{}", subject="istmo.somewhere.else", seq=3, stored_at=NOW)
    p = decide(msg)
    assert (p.verdict, p.sender) == ("reject", "unknown")


def test_a_key_is_refused_from_the_second_it_is_revoked() -> None:
    """A rotation revokes the old key from the next second: what JetStream stored before
    still verifies, what it stored from then on is refused (times are whole seconds)."""
    old = PARTIES["sv-military"].revoked
    directory = _directory(revoked_at=NOW + 1)
    env = sealed("sv-military", signing_key=old)
    before = ingested(env, sender="sv-military", stored_at=NOW)
    after = ingested(env, sender="sv-military", stored_at=NOW + 1)
    assert decide(before, directory=directory).verdict == "accept"
    assert decide(after, now=NOW + 1, directory=directory).reason == "key_revoked"


def test_expiry_is_by_the_relays_clock_and_skew_by_the_stored_time() -> None:
    env = sealed(created_at=NOW, expires_at=NOW + 30)
    assert decide(ingested(env), now=NOW + 29).verdict == "accept"
    assert decide(ingested(env), now=NOW + 30).reason == "expired"
    # A relay that was down for an hour does not reject the backlog it finds.
    late = ingested(sealed(created_at=NOW), stored_at=NOW + 5)
    assert decide(late, now=NOW + 3600).verdict == "accept"


def test_a_bulletin_queued_on_a_state_node_is_judged_by_its_gates_stamp() -> None:
    """ADR 0034: an hour on a cut-off node, stored on the hub after the heal. The gate's
    stamp decides its freshness; the hub's store time its key's revocation."""
    env = sealed(created_at=NOW - 3600)
    stamped = replace(ingested(env, stored_at=NOW), gated_at=NOW - 3600 + 2)
    assert decide(stamped).verdict == "accept"
    assert decide(ingested(env, stored_at=NOW)).reason == "timestamp_out_of_window"
    # Its copy sourced again later (a new stream message, the same envelope): a replay.
    again = replace(stamped, seq=8)
    assert decide(again, prior=Prior(7, envelope_digest(env))).reason == "replay"
    # A key revoked during the cut: refused by the hub's store time, whatever the stamp.
    old = PARTIES["sv-military"].revoked
    queued = sealed("sv-military", signing_key=old, created_at=NOW - 3600)
    msg = replace(ingested(queued, sender="sv-military", stored_at=NOW + 1), gated_at=NOW - 3600)
    assert decide(msg, now=NOW + 1, directory=_directory(revoked_at=NOW)).reason == "key_revoked"


# --------------------------------------------------------------------------- replay


def test_the_same_stream_message_again_resumes_without_deciding() -> None:
    env = sealed()
    p = decide(ingested(env, seq=9), prior=Prior(9, envelope_digest(env)))
    assert (p.verdict, p.bulletin_id) == ("resume", env.header.bulletin_id)
    assert p.addressed == PERMITTED
    assert (p.rows, p.events, p.decisions, p.deliver_to) == ((), (), (), ())
    assert p.withheld_from == ()  # counted when it was decided, not again


def test_the_same_envelope_on_another_message_is_a_replay() -> None:
    env = sealed()
    p = decide(ingested(env, seq=10), prior=Prior(9, envelope_digest(env)))
    assert (p.verdict, p.reason) == ("reject", "replay")


def test_another_envelope_under_a_taken_id_is_a_conflict() -> None:
    env = sealed()
    p = decide(ingested(env, seq=10), prior=Prior(9, "0" * 64))
    assert (p.verdict, p.reason) == ("reject", "id_conflict")


def test_within_a_batch_the_first_message_takes_the_id() -> None:
    env = sealed()
    other = sealed(bulletin_id=BulletinId(env.header.bulletin_id))
    msgs = [ingested(env, seq=1), ingested(env, seq=2), ingested(other, seq=3)]
    plans = plan_batch(
        msgs,
        [parse(m, LIMITS) for m in msgs],
        directory=DIRECTORY,
        limits=LIMITS,
        accepted={},
        now_ms=NOW_MS,
    )
    assert [(p.verdict, p.reason) for p in plans] == [
        ("accept", None),
        ("reject", "replay"),
        ("reject", "id_conflict"),
    ]


def test_a_batch_checks_ids_accepted_before_it() -> None:
    env = sealed()
    msgs = [ingested(env, seq=5), ingested(b"not json", seq=6)]
    plans = plan_batch(
        msgs,
        [parse(m, LIMITS) for m in msgs],
        directory=DIRECTORY,
        limits=LIMITS,
        accepted={env.header.bulletin_id: (5, envelope_digest(env))},
        now_ms=NOW_MS,
    )
    assert [p.verdict for p in plans] == ["resume", "reject"]


def test_an_id_refused_by_the_publish_policy_stays_taken_for_the_batch() -> None:
    env = sealed("gt-justice")
    msgs = [ingested(env, sender="gt-justice", seq=1), ingested(env, sender="gt-justice", seq=2)]
    plans = plan_batch(
        msgs,
        [parse(m, LIMITS) for m in msgs],
        directory=DIRECTORY,
        limits=LIMITS,
        accepted={},
        now_ms=NOW_MS,
    )
    assert [p.reason for p in plans] == ["policy_deny", "replay"]


# --------------------------------------------------------------------------- embargo


@pytest.mark.parametrize(
    ("not_before", "defer_s"),
    [(NOW + 90, 90), (NOW + 5 * 3600, MAX_DEFER_S)],
    ids=["minutes", "capped-at-an-hour"],
)
def test_an_embargoed_bulletin_is_deferred_undecided(not_before: int, defer_s: int) -> None:
    p = decide(ingested(sealed(not_before=not_before)))
    assert (p.verdict, p.defer_s) == ("defer", defer_s)
    assert (p.rows, p.events, p.decisions, p.claim) == ((), (), (), None)


def test_an_embargo_that_has_passed_is_decided() -> None:
    env = sealed(not_before=NOW + 90)
    assert decide(ingested(env), now=NOW + 90).verdict == "accept"


# --------------------------------------------------------------------------- corrections (ADR 15)

CORRECTED = "0b1e5a8c-1111-4222-8333-444455556666"  # an accepted bulletin of gt-police's


def _batch(*envs: Envelope, superseded: Mapping[str, str]) -> list[Plan]:
    msgs = [ingested(env, seq=i) for i, env in enumerate(envs, 1)]
    return plan_batch(
        msgs,
        [parse(m, LIMITS) for m in msgs],
        directory=DIRECTORY,
        limits=LIMITS,
        accepted={},
        now_ms=NOW_MS,
        superseded=superseded,
    )


@pytest.mark.parametrize(
    ("superseded", "verdict", "reason"),
    [
        ({CORRECTED: "gt-police"}, "accept", None),
        ({}, "reject", "unknown_superseded"),  # no such bulletin was accepted
        ({CORRECTED: "sv-police"}, "reject", "unknown_superseded"),  # another agency's
    ],
    ids=["own", "unknown", "another-agencys"],
)
def test_a_correction_must_supersede_an_accepted_bulletin_of_its_originator(
    superseded: Mapping[str, str], verdict: str, reason: str | None
) -> None:
    env = sealed(supersedes=BulletinId(CORRECTED))
    (p,) = _batch(env, superseded=superseded)
    assert (p.verdict, p.reason) == (verdict, reason)
    if verdict == "reject":
        # The same words for unknown and another agency's, and no id repeated.
        assert "supersedes no accepted bulletin of yours" in p.message
        assert CORRECTED not in p.message
        return
    row = values_of(p.rows[0], BulletinRow)
    assert row["supersedes"] == CORRECTED
    assert p.events[0].data["supersedes"] == CORRECTED


def test_a_bulletin_accepted_earlier_in_the_batch_may_be_corrected_in_it() -> None:
    first = sealed()
    fix = sealed(supersedes=BulletinId(first.header.bulletin_id))
    assert [p.verdict for p in _batch(first, fix, superseded={})] == ["accept", "accept"]
    # ... but not one refused earlier in it.
    refused = sealed("gt-justice")
    fix2 = sealed(supersedes=BulletinId(refused.header.bulletin_id))
    msgs = [ingested(refused, sender="gt-justice", seq=1), ingested(fix2, seq=2)]
    plans = plan_batch(
        msgs,
        [parse(m, LIMITS) for m in msgs],
        directory=DIRECTORY,
        limits=LIMITS,
        accepted={},
        now_ms=NOW_MS,
    )
    assert [p.reason for p in plans] == ["policy_deny", "unknown_superseded"]


def test_a_bulletin_that_corrects_nothing_is_not_asked_about_it() -> None:
    p = decide(ingested(sealed()))
    assert p.verdict == "accept"
    row = values_of(p.rows[0], BulletinRow)
    assert row["supersedes"] is None
    assert "supersedes" not in p.events[0].data


def test_the_expiry_travels_with_the_plan_for_the_deliveries_ttl() -> None:
    env = sealed(expires_at=NOW + 3600)
    accepted = decide(ingested(env))
    assert (accepted.verdict, accepted.expires_at) == ("accept", NOW + 3600)
    resumed = decide(ingested(env), prior=Prior(7, envelope_digest(env)))
    assert (resumed.verdict, resumed.expires_at) == ("resume", NOW + 3600)
    assert decide(ingested(sealed())).expires_at is None
