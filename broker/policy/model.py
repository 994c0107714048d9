"""The policy's values: what it decides over and what it answers.

Pure data, imported by the engine (``engine.py``), the explanation (``explain.py``) and
the simulation (``simulate.py``), and by every layer above that records or shows a
decision. ``Decider`` is the one thing simulation needs of an engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Protocol

from schemas.labels import Labels

__all__ = [
    "Action",
    "AgencyInfo",
    "BulletinFacts",
    "DecidedAlike",
    "Decider",
    "Decision",
    "JurisdictionInfo",
    "ReplyFacts",
]

Action = Literal["publish", "receive", "forward"]


@dataclass(frozen=True)
class JurisdictionInfo:
    """A member state or a community; a state's ``parents`` are its communities."""

    code: str
    kind: Literal["state", "community"]
    name: str
    parents: tuple[str, ...]


@dataclass(frozen=True)
class AgencyInfo:
    """An agency. Its Cedar parents are ``state`` if set, else ``communities``.

    ``min_source_grade`` ("A1".."F6"), if set, is the worst Admiralty grade the agency
    accepts on each axis; it then receives no ungraded bulletin.
    """

    id: str
    name: str
    sector: str
    status: str
    clearance: int
    topics: frozenset[str]
    state: str | None
    communities: tuple[str, ...]
    min_source_grade: str | None = None


@dataclass(frozen=True)
class ReplyFacts:
    """What the relay recorded of the bulletin a reply answers (ADR 16).

    Attributes:
        labels: that bulletin's labels, which the reply's may not weaken.
        releasable_within: its ``rel_to`` and every state that belongs to one of them,
            sorted: the jurisdictions a reply may be releasable to.
        audience: who a reply may reach, sorted.
    """

    labels: Labels
    releasable_within: tuple[str, ...]
    audience: tuple[str, ...]


@dataclass(frozen=True)
class BulletinFacts:
    """What the policy may know about one bulletin (times are epoch seconds); for a
    reply, what it answers (``in_reply_to``)."""

    bulletin_id: str
    originator: str
    origin_state: str | None
    labels: Labels
    not_before: int | None
    expires_at: int | None
    in_reply_to: ReplyFacts | None = None


@dataclass(frozen=True)
class Decision:
    """One decision, with what is needed to replay and explain it.

    ``policy_ids`` are the sorted ``@id``s of the determining policies (satisfied grants
    on an allow, satisfied guards on a deny, none on a default deny); ``reasons`` are
    their ``@reason`` texts in the same order.
    """

    agency: str
    action: Action
    allowed: bool
    policy_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    policy_version: str
    directory_version: str
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecidedAlike:
    """Receive candidates the policy decided alike (ADR 35): ``decision`` is the first
    one's, and each of the others has it with its own ``agency``.

    ``agencies`` are in the order the candidates were asked, first one first.
    """

    decision: Decision
    agencies: tuple[str, ...]
    # The engine's kept class these are what is left of, and the members it took out for
    # this bulletin (ADR 35, amended): ``agencies`` is ``base`` less ``cut``, in order.
    # None for candidates classed on their own.
    base: tuple[str, ...] | None = None
    cut: tuple[str, ...] = ()

    @cached_property
    def members(self) -> frozenset[str]:
        """``agencies`` as a set (made once: the engine keeps its classes a second)."""
        return frozenset(self.agencies)

    def each(self) -> list[Decision]:
        """Each candidate's own decision, in order."""
        d = self.decision  # the constructor, not dataclasses.replace: 4x faster
        rest = (d.action, d.allowed, d.policy_ids, d.reasons, d.policy_version,
                d.directory_version, d.errors)  # fmt: skip
        return [d if a == d.agency else Decision(a, *rest) for a in self.agencies]


class Decider(Protocol):
    """Decides ``publish``, ``receive`` and ``forward`` for a bulletin (``PolicyEngine``
    does)."""

    def decide_publish(self, facts: BulletinFacts, now: int) -> Decision: ...

    def decide_receive(
        self, facts: BulletinFacts, agencies: Sequence[str], now: int
    ) -> list[Decision]: ...

    def receive_classes(
        self, facts: BulletinFacts, agencies: Sequence[str], now: int
    ) -> tuple[DecidedAlike, ...]: ...

    def decide_forward(
        self, facts: BulletinFacts, forwarder: str, recipient: str, now: int, *, consent: bool
    ) -> Decision: ...
