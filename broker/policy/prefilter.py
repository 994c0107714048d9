"""The receive prefilter: candidates the adopted policy set certainly denies, found
without Cedar, for the questions whose answer is only who is allowed (``resolve``).

Derived from the policy set, never assumed. Each rule is in force only when the set holds
the policies that prove it, compared as parsed trees (cedarpy's PST; ``@id``, ``@reason``
and layout ignored) with the forms ``policies/base.cedar`` ships:

1. **clearance**: a ``forbid`` of exactly ``guard.clearance``'s form. Forbid always wins,
   so whatever else the set holds, a candidate other than the originator whose
   ``clearance`` is below the bulletin's ``classification`` is denied.
2. **releasability**: every ``permit`` that can apply to ``receive`` has the form of one
   of the four receive grants (``grant.originator``, ``grant.releasable``,
   ``grant.named-recipient``, ``grant.public``). A candidate none of them can grant (not
   the originator, not named, not ``in`` a jurisdiction of ``releasableTo``, and not a
   follower of a TLP:CLEAR, UNCLASSIFIED bulletin) is denied by default.

Another form of either switches that rule off, and the set is then decided by Cedar
alone: an operator's policy set can never be over-denied. The prefilter only removes
candidates; every allow comes from Cedar. It reads the Cedar entity data the engine gives
Cedar (the bulletin entity, each agency's attributes and ancestors), not the domain model,
so both see the same values. Left to the engine: building that data and deciding the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cedarpy import PolicySet, pst

from broker.policy.lint import NAMESPACE
from broker.policy.slicing import Uid, references, uid_of

__all__ = ["Ancestors", "Prefilter", "ReceiverFacts", "ReceiverIndex", "ancestry"]

_AGENCY = f"{NAMESPACE}::Agency"
_Json = dict[str, object]

# The proven forms, as base.cedar writes them (annotations do not take part).
_CLEARANCE_GUARD = """
forbid (principal, action == Istmo::Action::"receive", resource)
when { principal.clearance < resource.classification }
unless { principal == resource.originator };
"""
_RECEIVE_GRANTS = """
permit (principal, action == Istmo::Action::"receive", resource)
when { principal == resource.originator };
permit (principal, action == Istmo::Action::"receive", resource)
when { principal in resource.releasableTo };
permit (principal, action == Istmo::Action::"receive", resource)
when { resource.namedRecipients.contains(principal) };
permit (principal, action == Istmo::Action::"receive", resource)
when
{
  resource.tlp == "CLEAR" &&
  resource.classification == 0 &&
  principal.topics.contains(resource.topic)
};
"""

_Shape = tuple[object, ...]


def _shape(policy: pst.Template) -> _Shape:
    return (policy.effect, policy.principal, policy.action, policy.resource, policy.clauses)


def _shapes(text: str) -> frozenset[_Shape]:
    return frozenset(_shape(p) for p in PolicySet.from_str(text).to_pst().static_policies.values())


_CLEARANCE_SHAPES = _shapes(_CLEARANCE_GUARD)
_GRANT_SHAPES = _shapes(_RECEIVE_GRANTS)
_RECEIVE = next(iter(_CLEARANCE_SHAPES))[2]  # `action == Istmo::Action::"receive"`, as parsed


def _may_apply_to_receive(policy: pst.Template) -> bool:
    """False only for a scope that cannot match ``receive`` (``action == <another>``);
    ``action in [...]`` might, through action groups."""
    scope = policy.action
    return not (isinstance(scope, pst.ActionEq) and scope != _RECEIVE)


@dataclass(frozen=True)
class Prefilter:
    """The prefilter rules a policy set proves. Use ``Prefilter.derive``."""

    clearance: bool
    releasability: bool

    @property
    def rules(self) -> tuple[str, ...]:
        """The rules in force, by name: ``clearance``, ``releasability``."""
        on = (("clearance", self.clearance), ("releasability", self.releasability))
        return tuple(name for name, yes in on if yes)

    @classmethod
    def derive(cls, tree: pst.PolicySet) -> Prefilter:
        """The rules ``tree`` proves; a template, a link or a permit of another form
        switches the rules it could affect off."""
        policies = list(tree.static_policies.values())
        plain = not tree.templates and not tree.template_links
        clearance = plain and any(_shape(p) in _CLEARANCE_SHAPES for p in policies)
        releasability = plain and all(
            _shape(p) in _GRANT_SHAPES
            for p in policies
            if p.effect == "permit" and _may_apply_to_receive(p)
        )
        return cls(clearance, releasability)

    def survivors(
        self, bulletin: Mapping[str, object], candidates: Sequence[str], index: ReceiverIndex
    ) -> list[str]:
        """``candidates`` without those the rules deny, in order.

        Args:
            bulletin: the Cedar entity the engine decides over.
            candidates: agency ids; an id the index does not know is kept (Cedar denies it).
            index: the directory's agencies, as the same snapshot gives them to Cedar.

        Returns:
            Every candidate, unfiltered, when the bulletin's values are not of the types
            the rules compare (the engine then refuses it whole).
        """
        attrs = bulletin.get("attrs")
        if not self.rules or not isinstance(attrs, dict):
            return list(candidates)
        level, tlp, topic = attrs.get("classification"), attrs.get("tlp"), attrs.get("topic")
        if type(level) is not int or not isinstance(tlp, str) or not isinstance(topic, str):
            return list(candidates)
        originator = next(references(attrs.get("originator")), None)
        named = {i for t, i in references(attrs.get("namedRecipients")) if t == _AGENCY}
        releasable: set[str] = set()
        for uid in references(attrs.get("releasableTo")):
            releasable |= index.members.get(uid, frozenset())
            if uid[0] == _AGENCY:
                releasable.add(uid[1])  # `in` is reflexive
        public = tlp == "CLEAR" and level == 0
        kept = []
        for c in candidates:
            clearance = index.clearance.get(c)
            if clearance is None or (originator == (_AGENCY, c)):
                kept.append(c)  # unknown (Cedar denies it) or the originator (exempt)
            elif self.clearance and clearance < level:
                continue
            elif (
                self.releasability
                and c not in named
                and c not in releasable
                and not (public and topic in index.topics[c])
            ):
                continue
            else:
                kept.append(c)
        return kept


Ancestors = Callable[[Uid], frozenset[Uid]]


def ancestry(entities: Iterable[_Json]) -> Ancestors:
    """Each uid's ancestors in the parents graph of ``entities``, itself included, each
    walked once (and kept) the first time it is asked for."""
    parents: dict[Uid, list[Uid]] = {}
    for e in entities:
        uid, raw = uid_of(e["uid"]), e.get("parents")
        if uid is not None and isinstance(raw, list):
            parents[uid] = [p for p in map(uid_of, raw) if p]
    above: dict[Uid, frozenset[Uid]] = {}

    def ancestors(start: Uid) -> frozenset[Uid]:
        found = above.get(start)
        if found is None:
            seen = {start}
            todo = list(parents.get(start, ()))
            while todo:
                up = todo.pop()
                if up not in seen:
                    seen.add(up)
                    todo.extend(parents.get(up, ()))
            found = above[start] = frozenset(seen)
        return found

    return ancestors


@dataclass(frozen=True)
class ReceiverFacts:
    """What the rules read of one agency: its ``clearance``, its ``topics``, and
    ``within``, every uid it is ``in`` through its parents."""

    ident: str
    clearance: int
    topics: frozenset[str]
    within: frozenset[Uid]

    @classmethod
    def of(cls, entity: Mapping[str, object], ancestors: Ancestors) -> ReceiverFacts | None:
        """From an agency's Cedar JSON entity already checked against the schema; None
        for another entity, or an agency without an int ``clearance`` or a set of string
        ``topics`` (left out of the index, and so kept as a candidate: Cedar decides it).

        Args:
            ancestors: of the directory's jurisdictions (``ancestry``).
        """
        uid, raw, attrs = uid_of(entity["uid"]), entity.get("parents"), entity.get("attrs")
        if uid is None or uid[0] != _AGENCY or not isinstance(raw, list):
            return None
        if not isinstance(attrs, dict):
            return None
        level, follows = attrs.get("clearance"), attrs.get("topics")
        if type(level) is not int or not isinstance(follows, list):
            return None
        if not all(isinstance(t, str) for t in follows):
            return None
        within: set[Uid] = set()
        for parent in map(uid_of, raw):
            if parent is not None:
                within |= ancestors(parent)
        return cls(uid[1], level, frozenset(follows), frozenset(within))


@dataclass(frozen=True, eq=False)
class ReceiverIndex:
    """What the rules read of each agency, from its Cedar entity, precomputed when the
    directory is loaded: ``clearance``, ``topics``, and ``members`` (the agency ids
    ``in`` each jurisdiction uid, at any depth of the parents graph)."""

    clearance: Mapping[str, int] = field(repr=False)
    topics: Mapping[str, frozenset[str]] = field(repr=False)
    members: Mapping[Uid, frozenset[str]] = field(repr=False)

    @classmethod
    def build(cls, entities: Sequence[_Json]) -> ReceiverIndex:
        """From Cedar JSON entities already checked against the schema (an agency
        ``ReceiverFacts.of`` leaves out is kept as a candidate: Cedar decides it)."""
        ancestors = ancestry(entities)
        facts = (ReceiverFacts.of(e, ancestors) for e in entities)
        return cls.assemble(f for f in facts if f is not None)

    @classmethod
    def assemble(cls, facts: Iterable[ReceiverFacts]) -> ReceiverIndex:
        """From each agency's facts (a rebuild keeps those of agencies that did not
        change)."""
        clearance: dict[str, int] = {}
        topics: dict[str, frozenset[str]] = {}
        shared: dict[frozenset[str], frozenset[str]] = {}
        members: dict[Uid, set[str]] = {}
        for f in facts:
            clearance[f.ident] = f.clearance
            topics[f.ident] = shared.setdefault(f.topics, f.topics)  # a few distinct sets
            for up in f.within:
                members.setdefault(up, set()).add(f.ident)
        frozen = {uid: frozenset(ids) for uid, ids in members.items()}
        return cls(clearance, topics, frozen)
