"""What the partner-link tests share (ADR 32): one link, its gateway, labels it carries,
and real envelopes sealed for it."""

from __future__ import annotations

from broker.relay.guard import Link
from schemas.envelope import Content
from schemas.ids import parse_agency_id
from schemas.keys import EncryptionKey, SigningKey
from schemas.labels import Classification, Handling, Labels, Tlp
from schemas.sealing import encode_envelope, seal

__all__ = ["GATEWAY", "LABELS", "LINK", "LOCAL", "NOW", "OTHER", "sealed"]

NOW = 1_796_000_000
GATEWAY, LOCAL, OTHER = "eu-gateway", "gt-police", "eu-other"
KEYS = {a: EncryptionKey.generate("X25519") for a in (GATEWAY, LOCAL, OTHER)}
SIGNER = SigningKey.generate()
LINK = Link(
    name="eu-siena",
    code="EU-SIENA",
    agencies=(GATEWAY,),
    ceiling=Classification.RESTRICTED,
    topics=("drug-trafficking", "arms-trafficking"),
    tlps=(Tlp.CLEAR, Tlp.GREEN, Tlp.AMBER),
    handling=(Handling.H0,),
)
LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.GREEN,
    rel_to=("GT", "EU-SIENA"),
    handling=(Handling.H0,),
)


def sealed(recipients: tuple[str, ...] = (GATEWAY, LOCAL), labels: Labels = LABELS) -> bytes:
    env = seal(
        content=Content(title="Go-fast boat", text="due on Tuesday"),
        labels=labels,
        originator=parse_agency_id(LOCAL),
        signing_key=SIGNER,
        recipients={parse_agency_id(a): KEYS[a].public_key for a in recipients},
        now=NOW - 60,
    )
    return encode_envelope(env)
