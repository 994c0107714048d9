"""Checking a delivered withdrawal before the application is told of it (ADR 15). Pure:
the caller looks up the originator's key and what it handed over (``IstmoClient.receive``).

A withdrawal reaches a recipient through the broker, which must not be able to forge one
or turn one agency's withdrawal against another agency's bulletin. So, each failing
closed:
  1. the directory lists the key the withdrawal names as its originator's;
  2. that key was not revoked when the withdrawal was signed;
  3. the signature verifies;
  4. if this SDK handed a bulletin with this id to the application, it came from the same
     originator (an SDK before ADR 15 did not keep originators: such a bulletin cannot be
     checked, and its withdrawal is refused).
"""

from __future__ import annotations

from clients.results import Withdrawn
from schemas.directory import SigningKeyRecord
from schemas.errors import SignatureError
from schemas.withdrawal import Withdrawal, verify_withdrawal

__all__ = ["check_delivered_withdrawal"]


def check_delivered_withdrawal(
    w: Withdrawal,
    *,
    signer: SigningKeyRecord | None,
    handed: bool,
    handed_originator: str | None,
) -> Withdrawn:
    """What to tell the application of ``w``, once it is checked.

    Args:
        w: the withdrawal as delivered, parsed.
        signer: the originator's signing key ``w.kid`` as the directory lists it, or None.
        handed: whether a bulletin with ``w.bulletin_id`` was handed to the application.
        handed_originator: that bulletin's originator (None: unknown, or not handed).

    Raises:
        SignatureError: steps 1-4 (``code`` names which).
    """
    if signer is None:  # 1
        raise SignatureError("withdrawal signed by a key the directory does not know")
    if signer.revoked_at is not None and signer.revoked_at <= w.issued_at:  # 2
        raise SignatureError("withdrawal signed after its key was revoked", code="key_revoked")
    verify_withdrawal(w, signer.verify_key())  # 3
    if handed and handed_originator != w.originator:  # 4
        raise SignatureError(
            "withdrawal of a bulletin another agency originated", code="originator_mismatch"
        )
    return Withdrawn(
        id=w.bulletin_id,
        originator=w.originator,
        reason=w.reason,
        withdrawn_at=w.issued_at,
        had_it=handed,
    )
