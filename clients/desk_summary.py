"""Summaries of the desk's access log for the broker's audit log (ADR 31).

The desk keeps who opened, printed, answered or forwarded what in its own chained log
(``clients.desk_people``). Now and then it tells the broker how many entries of each
action each analyst made since the last summary, with the range's first and last chain
MACs, signed by the agency (``schemas.desk_summary``): the broker learns no content, no
bulletin id and no analyst name (each is a pseudonym: 12 hex characters of an HMAC under
the desk log's key, which only the agency can map back, ``istmo desk log show
--pseudonyms``), and the agency has committed to its log as it stood, so cutting or
rewriting it afterwards shows against the broker's record.

Pure: ``pseudonym``, ``log_id``, ``build_summary`` and ``summary_due``; the shell is
``send_summaries``, which reads the log, asks the SDK to sign and send, and remembers in
the archive's ``meta`` how far it got.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from clients.desk_people import DeskPeople
from clients.sdk import IstmoClient
from schemas.desk_summary import MAX_COUNTS, DeskSummaryReply, SummaryCount
from schemas.errors import ConfigError

__all__ = [
    "SUMMARY_AFTER_ENTRIES",
    "SUMMARY_EVERY_S",
    "Draft",
    "Row",
    "Send",
    "build_summary",
    "log_id",
    "pseudonym",
    "sdk_sender",
    "send_summaries",
    "summary_due",
]

SUMMARY_EVERY_S: Final = 24 * 3600  # the background sync sends one a day at most ...
SUMMARY_AFTER_ENTRIES: Final = 1000  # ... or once this many entries wait
ROWS_A_ROUND: Final = 5000  # entries read for one summary

Row = tuple[int, int, str, str, bytes]  # seq, at, who, action, mac


@dataclass(frozen=True)
class Draft:
    """A summary before it is signed: the range, its MACs and times, the counts."""

    first_seq: int
    last_seq: int
    prev_mac: str
    head_mac: str
    from_at: int
    to_at: int
    counts: tuple[SummaryCount, ...]


def pseudonym(key: bytes, who: str) -> str:
    """The analyst an entry is by, as the broker sees it: ``-`` for the desk's
    administrator at the command line, else 12 hex characters of an HMAC of the name
    under the log key (the account an account action is about, after ``>``, is dropped)."""
    actor = who.split(">", 1)[0]
    if actor == "-":
        return "-"
    return hmac.new(key, b"istmo/v1/desk-analyst\x00" + actor.encode(), hashlib.sha256).hexdigest()[
        :12
    ]


def log_id(key: bytes, chain: int = 0) -> str:
    """Which desk log this is, to the broker: 16 hex characters derived from its key and
    the number of its chain of summaries (0 until an operator starts a new one)."""
    label = b"istmo/v1/desk-log-id" + (f":{chain}".encode() if chain else b"")
    return hmac.new(key, label, hashlib.sha256).hexdigest()[:16]


def build_summary(
    rows: Sequence[Row], *, key: bytes, after: int, prev_mac: str, max_counts: int = MAX_COUNTS
) -> Draft | None:
    """The summary of ``rows`` (entries ``after + 1`` on, in order), or None if there are
    none. It stops before an entry that would make more than ``max_counts`` (analyst,
    action) pairs; the rest goes in the next summary.

    Raises:
        ValueError: the rows do not follow on from ``after`` one by one.
    """
    counts: dict[tuple[str, str], int] = {}
    last: Row | None = None
    for row in rows:
        seq, _, who, action, _ = row
        if seq != (after + 1 if last is None else last[0] + 1):
            raise ValueError(f"the desk log skips to entry {seq}")
        pair = (pseudonym(key, who), action)
        if pair not in counts and len(counts) >= max_counts:
            break
        counts[pair] = counts.get(pair, 0) + 1
        last = row
    if last is None:
        return None
    return Draft(
        first_seq=after + 1,
        last_seq=last[0],
        prev_mac=prev_mac,
        head_mac=bytes(last[4]).hex(),
        from_at=rows[0][1],
        to_at=max(last[1], rows[0][1]),
        counts=tuple(
            SummaryCount(analyst=a, action=act, n=n) for (a, act), n in sorted(counts.items())
        ),
    )


def summary_due(waiting: int, last_sent_at: int, now: int) -> bool:
    """Whether the background sync sends a summary: entries wait, and a day has passed
    since the last one, or ``SUMMARY_AFTER_ENTRIES`` wait."""
    if waiting <= 0:
        return False
    return waiting >= SUMMARY_AFTER_ENTRIES or now - last_sent_at >= SUMMARY_EVERY_S


Send = Callable[[str, Draft], Awaitable[DeskSummaryReply]]


def sdk_sender(client: IstmoClient) -> Send:
    """``send_summaries``'s ``send`` through a connected SDK client (it signs)."""

    async def send(log: str, d: Draft) -> DeskSummaryReply:
        return await client.send_desk_summary(
            log=log,
            first_seq=d.first_seq,
            last_seq=d.last_seq,
            prev_mac=d.prev_mac,
            head_mac=d.head_mac,
            from_at=d.from_at,
            to_at=d.to_at,
            counts=d.counts,
        )

    return send


async def send_summaries(people: DeskPeople, send: Send, *, max_rounds: int = 100) -> int:
    """Summarise the entries not summarised yet, one summary after another, and remember
    each one the broker recorded; how many summaries were sent. The log's chain is
    checked first: a broken log is not vouched for.

    Raises:
        ConfigError: the desk's access log is not whole (``istmo desk log verify``).
        IstmoError: the broker refused (what it recorded stays remembered).
    """
    check = people.verify()
    if not check.ok:
        raise ConfigError(
            f"the desk's access log is not whole (entry {check.first_bad}: {check.reason}); "
            "no summary is sent",
            hint="`istmo desk log verify` shows where",
        )
    sent = 0
    for _ in range(max_rounds):
        after, prev_mac, _ = people.summarised()
        rows = people.rows_after(after, ROWS_A_ROUND)
        draft = build_summary(rows, key=people.log_key, after=after, prev_mac=prev_mac)
        if draft is None:
            break
        reply = await send(log_id(people.log_key, people.summary_chain()), draft)
        if reply.last_seq != draft.last_seq:
            raise ConfigError("the broker recorded another range than the desk sent")
        people.mark_summarised(draft.last_seq, draft.head_mac)
        sent += 1
    return sent
