"""The wire contract's size limits, as plain numbers with nothing else imported, for code
that needs a limit but none of the models (the broker's settings, read by every command).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_ENVELOPE_BYTES",
    "MAX_ANNOUNCE_INTERVAL_S",
    "MAX_ATTACHMENTS",
    "MAX_ATTACHMENT_BYTES",
]

DEFAULT_MAX_ENVELOPE_BYTES = 1024 * 1024  # an envelope a parser takes unless told less
MAX_ANNOUNCE_INTERVAL_S = 300  # the longest a relay's announcements may be apart
MAX_ATTACHMENTS = 32  # files on one bulletin
MAX_ATTACHMENT_BYTES = 4 * 1024**3  # one file
