"""A desk's access-log summary: counts of who did what, signed by the agency (ADR 31).

An agency's desk keeps its own chained access log (``clients.desk_people``); now and then it
sends the broker a summary of the entries not summarised yet, on the ``desk-summary``
operation, and the broker records it as a ``desk.summary`` audit event. A summary holds:

- ``log``: which desk log it summarises (16 hex characters derived from the log's key, so
  two desks of one agency, or a desk whose archive was made anew, keep separate chains);
- ``first_seq`` .. ``last_seq``: the entries it covers, ``prev_mac`` the chain MAC of the
  entry before ``first_seq`` (zeros for the first) and ``head_mac`` that of ``last_seq``:
  a commitment an inspector later checks the desk's log against, which makes a log cut or
  rewritten after it was summarised visible from outside the agency;
- ``from_at`` .. ``to_at``: when the first and the last entry were written;
- ``counts``: how many entries of each action each analyst made, the analyst named by a
  pseudonym (12 hex characters of an HMAC under the desk log's key; ``-`` for the desk's
  administrator at the command line). Nothing else: no bulletin id, title, text, search
  word or analyst name.

Signed bytes: ``"istmo/v1/desk-summary" 0 canonical(every field but sig)``, by the agency's
current signing key, so the audit entry shows the agency said it. The broker can neither
forge one nor move one to another agency.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.canonical import canonical_json
from schemas.envelope import Kid, Timestamp, parse_model
from schemas.errors import EnvelopeError
from schemas.ids import AgencyIdStr
from schemas.keys import SigningKey, VerifyKey
from schemas.selfsigned import sign_document, verify_document

__all__ = [
    "GENESIS_MAC",
    "MAX_COUNTS",
    "MAX_ENTRIES",
    "MAX_SUMMARY_BYTES",
    "DeskSummary",
    "DeskSummaryReply",
    "SummaryCount",
    "check_consistent",
    "encode_summary",
    "parse_summary",
    "sign_summary",
    "verify_summary",
]

MAX_COUNTS = 200  # (analyst, action) pairs in one summary
MAX_ENTRIES = 100_000  # entries one summary covers
MAX_SUMMARY_BYTES = 24 * 1024  # 200 counts of ~60 bytes and the fixed fields, with room
GENESIS_MAC = "0" * 64
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)

Pseudonym = Annotated[str, StringConstraints(pattern=r"^(-|[0-9a-f]{12})$")]
ActionWord = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z-]{0,23}$")]
Mac = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
LogId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
Seq = Annotated[int, Field(ge=1, le=2**53)]


class SummaryCount(BaseModel):
    """``n`` entries of ``action`` by the analyst ``analyst`` (a pseudonym)."""

    model_config = _STRICT

    analyst: Pseudonym
    action: ActionWord
    n: int = Field(ge=1, le=MAX_ENTRIES)


class DeskSummary(BaseModel):
    """``agency``'s desk log ``log``, entries ``first_seq``..``last_seq``, counted."""

    model_config = _STRICT

    v: Literal[1]
    agency: AgencyIdStr
    log: LogId
    first_seq: Seq
    last_seq: Seq
    prev_mac: Mac
    head_mac: Mac
    from_at: Timestamp
    to_at: Timestamp
    counts: tuple[SummaryCount, ...] = Field(min_length=1, max_length=MAX_COUNTS)
    issued_at: Timestamp
    kid: Kid
    sig: str


class DeskSummaryReply(BaseModel):
    """The broker recorded the summary of ``log`` up to ``last_seq`` at ``recorded_at``
    (epoch seconds); ``again``: the same summary was recorded before and nothing new was."""

    model_config = _STRICT

    log: LogId
    last_seq: Seq
    recorded_at: Timestamp
    again: bool


def check_consistent(s: DeskSummary) -> None:
    """Raise EnvelopeError (``malformed``) unless ``s`` adds up: the range runs forwards,
    the counts are sorted by (analyst, action) without repeats and sum to the entries
    the range covers, the times run forwards, and the first summary starts at genesis."""
    entries = s.last_seq - s.first_seq + 1
    if entries < 1 or entries > MAX_ENTRIES:
        raise EnvelopeError("the summary's sequence range is empty or too long", code="malformed")
    keys = [(c.analyst, c.action) for c in s.counts]
    if keys != sorted(set(keys)):
        raise EnvelopeError(
            "the summary's counts are not sorted or name a pair twice", code="malformed"
        )
    if sum(c.n for c in s.counts) != entries:
        raise EnvelopeError(
            f"the summary's counts do not add up to its {entries} entries", code="malformed"
        )
    if s.from_at > s.to_at:
        raise EnvelopeError("the summary's times run backwards", code="malformed")
    if (s.first_seq == 1) != (s.prev_mac == GENESIS_MAC):
        raise EnvelopeError(
            "a summary from entry 1 (and only one) follows the genesis MAC", code="malformed"
        )


def sign_summary(
    *,
    agency: str,
    log: str,
    first_seq: int,
    last_seq: int,
    prev_mac: str,
    head_mac: str,
    from_at: int,
    to_at: int,
    counts: tuple[SummaryCount, ...],
    issued_at: int,
    key: SigningKey,
) -> DeskSummary:
    """Build, check and sign a summary with the agency's (current) signing key.

    Raises:
        pydantic.ValidationError: a field is out of bounds.
        EnvelopeError: it does not add up (``check_consistent``).
    """
    unsigned = DeskSummary(
        v=1,
        agency=agency,
        log=log,
        first_seq=first_seq,
        last_seq=last_seq,
        prev_mac=prev_mac,
        head_mac=head_mac,
        from_at=from_at,
        to_at=to_at,
        counts=counts,
        issued_at=issued_at,
        kid=key.verify_key.kid,
        sig="",
    )
    check_consistent(unsigned)
    return sign_document("desk-summary", unsigned, key)


def verify_summary(s: DeskSummary, key: VerifyKey) -> None:
    """Raise SignatureError unless ``s`` is signed by ``key``."""
    verify_document("desk-summary", s, kid=s.kid, sig=s.sig, key=key)


def encode_summary(s: DeskSummary) -> bytes:
    """The canonical bytes of a summary, as sent."""
    return canonical_json(s.model_dump(mode="json"))


def parse_summary(raw: bytes) -> DeskSummary:
    """Parse a summary strictly (EnvelopeError on any fault, naming the field only;
    ``oversized`` over ``MAX_SUMMARY_BYTES``)."""
    return parse_model(DeskSummary, raw, max_bytes=MAX_SUMMARY_BYTES, what="desk summary")
