"""The Istmo client SDK and CLI: publish, receive and acknowledge sealed bulletins.

Typical use (async)::

    from clients import IstmoClient, Labels
    async with await IstmoClient.connect(keystore_path, nats_url) as client:
        result = await client.publish(title="...", text="...", labels=Labels(...))
        async for bulletin in client.receive(count=1, timeout=10):
            print(bulletin.title)

``clients.sync.Istmo`` offers the same calls without ``await`` for scripts.
"""

from clients.sdk import (
    IstmoClient,
    PublishResult,
    RecallResult,
    ReceiptReport,
    ReceivedBulletin,
    Withdrawn,
)
from schemas.labels import Classification, Handling, Labels, Precedence, Tlp

__all__ = [
    "Classification",
    "Handling",
    "IstmoClient",
    "Labels",
    "Precedence",
    "PublishResult",
    "RecallResult",
    "ReceiptReport",
    "ReceivedBulletin",
    "Tlp",
    "Withdrawn",
]
