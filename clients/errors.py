"""The SDK's own errors.

The SDK's branches of the tree drawn in ``schemas.errors``::

    IstmoError
    ├── BusUnavailable
    │   └── PublishUnacknowledged    NATS never acknowledged a bulletin
    └── PublishRejected              the relay refused a bulletin (``code`` says why)
"""

from __future__ import annotations

from schemas.errors import BusUnavailable, IstmoError

__all__ = ["PublishRejected", "PublishUnacknowledged"]


class PublishRejected(IstmoError):
    """The relay refused a bulletin; ``code`` is its reason."""

    default_code = "rejected"


class PublishUnacknowledged(BusUnavailable):
    """NATS never acknowledged the bulletin: it may or may not be stored. Publishing it
    again makes a new bulletin (a new id); ask ``status(bulletin_id)`` first."""

    default_code = "unacknowledged"

    def __init__(self, bulletin_id: str, why: str) -> None:
        super().__init__(
            f"NATS did not acknowledge bulletin {bulletin_id} ({why}): it may or may not "
            "be stored; check its status before publishing it again, which would make a "
            "new bulletin"
        )
        self.bulletin_id = bulletin_id
