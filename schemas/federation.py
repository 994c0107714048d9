"""A partner link's daily counts, signed by one side, and how two sides' counts compare
(ADR 32).

A *link* carries bulletins from one Istmo region to a partner hub (another region, a SIENA
gateway). The sending side audits every bulletin its guard passes (``federation.passed``),
the receiving side every one that arrives and passes its own check
(``federation.arrived``). Each side counts its events of one UTC day, per *label set*
(topic, classification, TLP, handling codes), and signs the result with its link key:

- ``n``: how many bulletins of that label set;
- ``ids``: the hex SHA-256 of their bulletin ids, sorted, one per line (so one bulletin
  dropped and another passed in its place, with the same labels, still differs).

The day is the bulletin's own ``created_at`` (signed, in clear, the same on both sides),
not the time either side recorded it, so a bulletin passed at 23:59:59 and arrived after
midnight counts on the same day on both.

Signed bytes: ``"istmo/v1/federation-counts" 0 canonical(every field but sig)``, by the
side's link key (Ed25519; ``istmo federation key`` prints its public half for the other
side). ``differences`` compares a sending side's counts with a receiving side's: any
difference (a label set one side has and the other has not, another count, another id
digest) is an alarm. Nothing here names a recipient, a title or any content.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.canonical import canonical_json
from schemas.envelope import Kid, Timestamp, parse_model
from schemas.errors import EnvelopeError
from schemas.ids import AGENCY_ID_PATTERN, BULLETIN_ID_PATTERN
from schemas.keys import SigningKey, VerifyKey
from schemas.labels import Classification, Handling, Tlp, Topic
from schemas.selfsigned import sign_document, verify_document

__all__ = [
    "DAY_PATTERN",
    "MAX_COUNTS",
    "MAX_COUNTS_BYTES",
    "MAX_PER_DAY",
    "LabelCount",
    "LabelSet",
    "LinkCounts",
    "Side",
    "count_labels",
    "day_of",
    "differences",
    "encode_counts",
    "parse_counts",
    "sign_counts",
    "verify_counts",
]

# Every label set there is: 8 topics x 4 classifications x 5 TLPs x 16 handling sets.
MAX_COUNTS = 2560
MAX_PER_DAY = 10_000_000  # bulletins of one label set in one day
MAX_COUNTS_BYTES = 1024 * 1024  # 2,560 counts of ~170 bytes, with room
DAY_PATTERN = r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
_BULLETIN_RE = re.compile(BULLETIN_ID_PATTERN)
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)

Side = Literal["sent", "received"]
LinkName = Annotated[str, StringConstraints(pattern=AGENCY_ID_PATTERN)]
RegionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
Day = Annotated[str, StringConstraints(pattern=DAY_PATTERN)]
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# (topic, classification, TLP, handling codes sorted): what one count is about.
LabelSet = tuple[str, str, str, tuple[str, ...]]


class LabelCount(BaseModel):
    """``n`` bulletins labelled ``topic``, ``classification``, ``tlp``, ``handling``,
    whose sorted ids hash to ``ids``."""

    model_config = _STRICT

    topic: Topic
    classification: Classification
    tlp: Tlp
    handling: tuple[Handling, ...] = Field(default=(), max_length=4)
    n: int = Field(ge=1, le=MAX_PER_DAY)
    ids: Digest

    @property
    def label_set(self) -> LabelSet:
        return (self.topic, self.classification.value, self.tlp.value, self.handling)


class LinkCounts(BaseModel):
    """What ``region`` counted on link ``link`` on ``day`` as its ``side``."""

    model_config = _STRICT

    v: Literal[1]
    link: LinkName
    side: Side
    region: RegionName
    day: Day
    counts: tuple[LabelCount, ...] = Field(max_length=MAX_COUNTS)
    total: int = Field(ge=0, le=MAX_COUNTS * MAX_PER_DAY)
    issued_at: Timestamp
    kid: Kid
    sig: str


def day_of(epoch_s: int) -> str:
    """The UTC day (``YYYY-MM-DD``) of ``epoch_s``."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d")


def count_labels(items: Iterable[tuple[str, LabelSet]]) -> tuple[LabelCount, ...]:
    """Count ``(bulletin id, label set)`` pairs per label set, each bulletin once, sorted.

    Raises:
        EnvelopeError: a bulletin id is malformed, a label unknown, or one id comes with
            two label sets.
    """
    seen: dict[str, LabelSet] = {}
    for bulletin_id, labels in items:
        if _BULLETIN_RE.fullmatch(bulletin_id) is None:
            raise EnvelopeError("a counted bulletin id is malformed", code="malformed")
        topic, classification, tlp, handling = labels
        key: LabelSet = (topic, classification, tlp, tuple(sorted(handling)))
        if seen.setdefault(bulletin_id, key) != key:
            raise EnvelopeError(
                f"bulletin {bulletin_id} is counted with two label sets", code="malformed"
            )
    groups: dict[LabelSet, list[str]] = {}
    for bulletin_id, key in seen.items():
        groups.setdefault(key, []).append(bulletin_id)
    try:
        return tuple(
            LabelCount(
                topic=key[0],  # checked by the model
                classification=Classification(key[1]),
                tlp=Tlp(key[2]),
                handling=tuple(Handling(h) for h in key[3]),
                n=len(ids),
                ids=_ids_digest(ids),
            )
            for key, ids in sorted(groups.items())
        )
    except ValueError as exc:  # pydantic's ValidationError is one too
        raise EnvelopeError("a counted label is not a known value", code="unknown_label") from exc


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode("ascii")).hexdigest()


def _check_consistent(c: LinkCounts) -> None:
    keys = [x.label_set for x in c.counts]
    if keys != sorted(set(keys)):
        raise EnvelopeError(
            "the counts are not sorted by label set or name one twice", code="malformed"
        )
    if any(list(x.handling) != sorted(set(x.handling)) for x in c.counts):
        raise EnvelopeError("a count's handling codes are not sorted and unique", code="malformed")
    if sum(x.n for x in c.counts) != c.total:
        raise EnvelopeError("the counts do not add up to the total", code="malformed")


def sign_counts(
    *,
    link: str,
    side: Side,
    region: str,
    day: str,
    counts: tuple[LabelCount, ...],
    issued_at: int,
    key: SigningKey,
) -> LinkCounts:
    """Build, check and sign one side's counts with its link key.

    Raises:
        pydantic.ValidationError: a field is out of bounds.
        EnvelopeError: the counts are not sorted or do not add up.
    """
    unsigned = LinkCounts(
        v=1,
        link=link,
        side=side,
        region=region,
        day=day,
        counts=counts,
        total=sum(c.n for c in counts),
        issued_at=issued_at,
        kid=key.verify_key.kid,
        sig="",
    )
    _check_consistent(unsigned)
    return sign_document("federation-counts", unsigned, key)


def verify_counts(c: LinkCounts, key: VerifyKey) -> None:
    """Raise EnvelopeError unless ``c``'s counts are sorted and add up, SignatureError
    unless it is signed by ``key``."""
    _check_consistent(c)
    verify_document("federation-counts", c, kid=c.kid, sig=c.sig, key=key)


def encode_counts(c: LinkCounts) -> bytes:
    """The canonical bytes of one side's counts, as written and exchanged."""
    return canonical_json(c.model_dump(mode="json"))


def parse_counts(raw: bytes) -> LinkCounts:
    """Parse one side's counts strictly (EnvelopeError on any fault, naming the field
    only; ``oversized`` over ``MAX_COUNTS_BYTES``)."""
    return parse_model(LinkCounts, raw, max_bytes=MAX_COUNTS_BYTES, what="link counts")


def _name(key: LabelSet) -> str:
    topic, classification, tlp, handling = key
    return "/".join((topic, classification, tlp, "+".join(handling) or "-"))


def differences(sent: LinkCounts, received: LinkCounts) -> list[str]:
    """Every way the receiving side's counts differ from the sending side's, one line
    each (empty: they agree). Both are assumed verified (``verify_counts``)."""
    out: list[str] = []
    if (sent.side, received.side) != ("sent", "received"):
        out.append(f"sides are {sent.side} and {received.side}, not sent and received")
    if sent.link != received.link:
        out.append(f"links differ: {sent.link} and {received.link}")
    if sent.day != received.day:
        out.append(f"days differ: {sent.day} and {received.day}")
    ours = {c.label_set: c for c in sent.counts}
    theirs = {c.label_set: c for c in received.counts}
    for key in sorted(ours.keys() | theirs.keys()):
        a, b = ours.get(key), theirs.get(key)
        if a is None and b is not None:
            out.append(f"{_name(key)}: received {b.n}, none sent (widened)")
        elif b is None and a is not None:
            out.append(f"{_name(key)}: sent {a.n}, none received (dropped)")
        elif a is not None and b is not None and a.n != b.n:
            word = "dropped" if a.n > b.n else "widened"
            out.append(f"{_name(key)}: sent {a.n}, received {b.n} ({word})")
        elif a is not None and b is not None and a.ids != b.ids:
            out.append(f"{_name(key)}: {a.n} each, but not the same bulletins")
    return out
