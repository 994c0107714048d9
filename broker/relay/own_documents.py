"""The checks every document an agency signs about itself passes at the relay (a
withdrawal, ADR 15; a desk summary, ADR 31): it names the caller, it is signed by the
caller's current key, the signature covers it, and it was made now."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from schemas.directory import AgencyRecord
from schemas.errors import EnvelopeError, SignatureError
from schemas.keys import VerifyKey

__all__ = ["check_fresh", "check_signed_by_caller"]


def check_signed_by_caller(
    what: str,
    *,
    named: str,
    kid: str,
    caller: str,
    records: Mapping[str, AgencyRecord],
    verify: Callable[[VerifyKey], None],
) -> None:
    """(1) ``named`` is ``caller``, the agency NATS authenticated; (2) ``kid`` is a signing
    key of the caller's that is not revoked; (3) ``verify`` accepts the document under it.

    Raises:
        EnvelopeError: ``originator_mismatch`` (1).
        SignatureError: ``key_not_current`` (2), ``signature_invalid`` (3).
    """
    if named != caller:
        raise EnvelopeError(f"the {what} names another agency", code="originator_mismatch")
    record = records.get(caller)
    key = next((k for k in record.signing_keys if k.kid == kid), None) if record else None
    if key is None or key.revoked_at is not None:
        raise SignatureError(
            f"the {what} is not signed by your current signing key", code="key_not_current"
        )
    try:
        verify(key.verify_key())
    except SignatureError as exc:
        raise SignatureError(
            f"the {what}'s signature does not verify", code="signature_invalid"
        ) from exc


def check_fresh(issued_at: int, *, now: int, max_skew_s: int) -> None:
    """It was made now, not replayed from long ago.

    Raises:
        EnvelopeError: ``timestamp_out_of_window``.
    """
    skew = issued_at - now
    if abs(skew) > max_skew_s:
        direction = "ahead of" if skew > 0 else "behind"
        raise EnvelopeError(
            f"issued_at is {abs(skew)} s {direction} the broker clock (allowed {max_skew_s} s)",
            code="timestamp_out_of_window",
        )
