"""What a bulletin that crossed a partner link carries to the agency it is delivered to
(ADR 33, "Opening on the partner's side").

The receiving region's ingest stores the envelope, unchanged, on its own delivery stream
with two headers the relay never sets (and an agency cannot: only the broker writes to
the delivery stream):

- ``Istmo-Link``: the link it crossed (``eu-siena``);
- ``Istmo-Partner-Record``: the sending region's signed directory excerpt that came with
  the transfer and listed the originator (base64 of its canonical JSON), signed by the
  sending region's directory key.

The receiving agency's SDK trusts neither: it checks the excerpt against the sending
region's directory key that its own operator pinned for that link
(``clients.partners``), then the originator's signature against the record, as for a
bulletin of its own region. Nothing here is content.
"""

from __future__ import annotations

from schemas.canonical import b64d, b64e, canonical_json
from schemas.directory import SignedExcerpt
from schemas.envelope import parse_model
from schemas.errors import EnvelopeError
from schemas.ids import parse_agency_id

__all__ = [
    "LINK_HEADER",
    "MAX_PARTNER_RECORD_BYTES",
    "PARTNER_RECORD_HEADER",
    "crossed_headers",
    "parse_partner_record",
]

LINK_HEADER = "Istmo-Link"
PARTNER_RECORD_HEADER = "Istmo-Partner-Record"
# One agency's record (64 signing keys at most) fits in far less (as a transfer's room).
MAX_PARTNER_RECORD_BYTES = 256 * 1024


def crossed_headers(link: str, record: SignedExcerpt) -> dict[str, str]:
    """The headers the ingest stores a crossed bulletin's delivery with."""
    return {
        LINK_HEADER: link,
        PARTNER_RECORD_HEADER: b64e(canonical_json(record.model_dump(mode="json"))),
    }


def parse_partner_record(headers: dict[str, str]) -> tuple[str, SignedExcerpt] | None:
    """The link and signed excerpt a delivery's headers carry; None if it did not cross a
    link (no ``Istmo-Link`` header). Parsed only: the signature is the caller's to check.

    Raises:
        EnvelopeError: ``malformed``: a link header without a record, a link name that is
            not one, or a record that does not parse within ``MAX_PARTNER_RECORD_BYTES``.
    """
    link = headers.get(LINK_HEADER)
    if link is None:
        return None
    try:
        parse_agency_id(link)
    except EnvelopeError as exc:
        raise EnvelopeError("a crossed delivery names no valid link", code="malformed") from exc
    value = headers.get(PARTNER_RECORD_HEADER, "")
    if not value:
        raise EnvelopeError("a crossed delivery without its partner record", code="malformed")
    raw = b64d(value, field="partner record", max_bytes=MAX_PARTNER_RECORD_BYTES)
    record = parse_model(
        SignedExcerpt, raw, max_bytes=MAX_PARTNER_RECORD_BYTES, what="partner record"
    )
    return link, record
