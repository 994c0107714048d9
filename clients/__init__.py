"""The Istmo client SDK and CLI: publish, receive and acknowledge sealed bulletins.

Typical use (async)::

    from clients import IstmoClient, Labels
    async with await IstmoClient.connect(keystore_path, nats_url) as client:
        result = await client.publish(title="...", text="...", labels=Labels(...))
        async for bulletin in client.receive(count=1, timeout=10):
            print(bulletin.title)

``clients.sync.Istmo`` offers the same calls without ``await`` for scripts.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clients.sdk import (
        ForwardOutcome,
        ForwardRequest,
        IstmoClient,
        PublishResult,
        RecallResult,
        ReceiptReport,
        ReceivedBulletin,
        ReplyContext,
        Rfi,
        VerifiedReceipts,
        Withdrawn,
    )
    from schemas.labels import Classification, Handling, Labels, Precedence, Tlp

__all__ = [
    "Classification",
    "ForwardOutcome",
    "ForwardRequest",
    "Handling",
    "IstmoClient",
    "Labels",
    "Precedence",
    "PublishResult",
    "RecallResult",
    "ReceiptReport",
    "ReceivedBulletin",
    "ReplyContext",
    "Rfi",
    "Tlp",
    "VerifiedReceipts",
    "Withdrawn",
]

_LABELS = {"Classification", "Handling", "Labels", "Precedence", "Tlp"}


def __getattr__(name: str) -> object:
    """The SDK's names, imported when first asked for: ``istmo`` commands import
    ``clients.<module>`` for their own work, and the SDK (nats, the crypto, every wire
    model: about 0.4 s of CPU) only when they use it."""
    if name in _LABELS:
        import schemas.labels

        return getattr(schemas.labels, name)
    if name in __all__:
        import clients.sdk

        return getattr(clients.sdk, name)
    raise AttributeError(f"module 'clients' has no attribute {name!r}")
