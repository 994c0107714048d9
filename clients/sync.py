"""A blocking facade over the async client, for scripts.

Example::

    from pathlib import Path
    from clients.sync import Istmo
    from clients import Classification, Labels, Tlp

    with Istmo(Path(".istmo/keys/gt-police.json"), "nats://127.0.0.1:4244") as istmo:
        result = istmo.publish(
            title="Go-fast boats sighted",
            text="Two boats left Puerto Barrios at 03:10.",
            labels=Labels(topic="drug-trafficking", classification=Classification.RESTRICTED,
                          tlp=Tlp.AMBER, rel_to=("SICA",)),
        )
        print(result.bulletin_id, result.routed)

Each ``Istmo`` runs its own event loop on the calling thread; do not use it from inside
a running event loop (use ``IstmoClient`` there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from clients.sdk import (
    IstmoClient,
    PublishResult,
    RecallResult,
    ReceiptReport,
    ReceivedBulletin,
    VerifiedReceipts,
    Withdrawn,
    Withheld,
)
from schemas.labels import Labels

__all__ = ["Istmo"]


class Istmo:
    """The same calls as ``IstmoClient``, without ``await``."""

    def __init__(self, keystore_path: Path, nats_url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._client: IstmoClient = self._loop.run_until_complete(
                IstmoClient.connect(keystore_path, nats_url, **options)
            )
        except BaseException:
            self._loop.close()
            raise

    def __enter__(self) -> Istmo:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._loop.run_until_complete(self._client.close())
        finally:
            self._loop.close()

    @property
    def agency(self) -> str:
        return self._client.agency

    def publish(self, *, title: str, text: str, labels: Labels, **kw: Any) -> PublishResult:
        """See ``IstmoClient.publish``."""
        return self._loop.run_until_complete(
            self._client.publish(title=title, text=text, labels=labels, **kw)
        )

    def receive(
        self,
        handler: Callable[[ReceivedBulletin], None],
        *,
        count: int | None = None,
        timeout: float | None = None,
        on_withdrawal: Callable[[Withdrawn], None] | None = None,
        push: bool = True,
    ) -> int:
        """See ``IstmoClient.receive``; ``handler`` and ``on_withdrawal`` are plain
        functions here."""

        async def call(b: ReceivedBulletin) -> None:
            handler(b)

        async def told(w: Withdrawn) -> None:
            if on_withdrawal is not None:
                on_withdrawal(w)

        return self._loop.run_until_complete(
            self._client.receive(
                call,
                count=count,
                timeout=timeout,
                on_withdrawal=told if on_withdrawal is not None else None,
                push=push,
            )
        )

    def save_attachments(self, bulletin: ReceivedBulletin, directory: Path | str) -> list[Path]:
        """See ``IstmoClient.save_attachments`` (call it after ``receive``, with the
        bulletins its handler kept)."""
        return self._loop.run_until_complete(self._client.save_attachments(bulletin, directory))

    def recall(self, bulletin_id: str, *, reason: str) -> RecallResult:
        """See ``IstmoClient.recall``."""
        return self._loop.run_until_complete(self._client.recall(bulletin_id, reason=reason))

    def receipts(self, bulletin_id: str) -> ReceiptReport:
        """See ``IstmoClient.receipts``."""
        return self._loop.run_until_complete(self._client.receipts(bulletin_id))

    def verify_receipts(
        self, bulletin_id: str, *, envelope_digest: str | None = None
    ) -> VerifiedReceipts:
        """See ``IstmoClient.verify_receipts``."""
        return self._loop.run_until_complete(
            self._client.verify_receipts(bulletin_id, envelope_digest=envelope_digest)
        )

    def status(self, bulletin_id: str) -> dict[str, Any]:
        """See ``IstmoClient.status``."""
        return self._loop.run_until_complete(self._client.status(bulletin_id))

    def withheld(self) -> Withheld:
        """See ``IstmoClient.withheld``."""
        return self._loop.run_until_complete(self._client.withheld())
