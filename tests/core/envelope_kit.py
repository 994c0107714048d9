"""What the envelope, receipt, directory-excerpt and key tests share: the agencies and
their keys, the labels and content sealed, one honest envelope (``BASE``) and the
helpers that change one field of a parsed JSON document."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.canonical import b64e
from schemas.directory import AgencyRecord, EncryptionKeyRecord, SigningKeyRecord
from schemas.envelope import Content, Envelope
from schemas.ids import AgencyId, parse_agency_id
from schemas.keys import KEMS, EncryptionKey, EncryptionPublicKey, KemName, SigningKey, VerifyKey
from schemas.labels import Classification, Handling, Labels, Tlp
from schemas.sealing import seal

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Agency:
    id: AgencyId
    sign: SigningKey
    enc: dict[KemName, EncryptionKey]

    @property
    def verify_key(self) -> VerifyKey:
        return self.sign.verify_key

    def pub(self, kem: KemName) -> EncryptionPublicKey:
        return self.enc[kem].public_key


def make_agency(name: str) -> Agency:
    return Agency(
        parse_agency_id(name), SigningKey.generate(), {k: EncryptionKey.generate(k) for k in KEMS}
    )


A = make_agency("policia-pa")  # the originator
R1 = make_agency("policia-cr")
R2 = make_agency("ejercito-gt")
R3 = make_agency("cancilleria-sv")
C = make_agency("fiscalia-hn")  # never a recipient
M = make_agency("policia-ni")  # a registered agency turned attacker
DIRECTORY_KEY = SigningKey.generate()

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.CONFIDENTIAL,
    tlp=Tlp.AMBER,
    rel_to=("PA", "CR", "SICA"),
    handling=(Handling.H2,),
)
CONTENT = Content(title="Lancha rápida", text="Cargamento previsto el martes. 🚤")


def seal_for(
    kem: KemName,
    recipients: Sequence[Agency] = (R1, R2, R3),
    *,
    originator: Agency = A,
    **kwargs: Any,
) -> Envelope:
    return seal(
        content=CONTENT,
        labels=LABELS,
        originator=originator.id,
        signing_key=originator.sign,
        recipients={r.id: r.pub(kem) for r in recipients},
        now=NOW,
        **kwargs,
    )


def as_json(d: Any) -> bytes:
    return json.dumps(d, ensure_ascii=False).encode()


BASE = seal_for("X25519", (R1, R2))
FieldPath = tuple[str | int, ...]


def put(path: FieldPath, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        target: Any = d
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return mutate


def drop(path: FieldPath) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        target: Any = d
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]

    return mutate


def agency_record(
    agency: str, *keys: tuple[SigningKey, int | None], now: int = NOW
) -> AgencyRecord:
    """A directory record of an active SICA police ``agency`` with these signing keys,
    each (key, revoked at or None), registered a day before ``now``."""
    return AgencyRecord(
        id=agency,
        name=agency,
        state=agency[:2].upper(),
        communities=("SICA",),
        sector="police",
        status="active",
        signing_keys=tuple(
            SigningKeyRecord(
                kid=k.verify_key.kid,
                public=b64e(k.verify_key.public),
                created_at=now - 86400,
                revoked_at=revoked,
            )
            for k, revoked in keys
        ),
    )


def record_of(ag: Agency, kem: KemName = "MLKEM768-X25519", **overrides: Any) -> AgencyRecord:
    """The directory record of ``ag``: an active SICA police agency of Panama with its
    signing key and its ``kem`` encryption key, registered a day before ``NOW``;
    ``overrides`` replace any field."""
    vk, pub = ag.verify_key, ag.pub(kem)
    fields: dict[str, Any] = {
        "id": ag.id,
        "name": "Policía Nacional",
        "state": "PA",
        "communities": ("SICA",),
        "sector": "police",
        "status": "active",
        "signing_keys": (
            SigningKeyRecord(kid=vk.kid, public=b64e(vk.public), created_at=NOW - 86400),
        ),
        "encryption_key": EncryptionKeyRecord(
            kid=pub.kid, kem=kem, public=b64e(pub.public), created_at=NOW - 86400
        ),
    }
    fields.update(overrides)
    return AgencyRecord(**fields)
