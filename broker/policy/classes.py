"""Classes of candidates the policy set cannot tell apart: Cedar decides one of each.

For one bulletin, call *fixed* the entities reachable from the request's common roots:
the bulletin, what it refers to, and the entities the policies name, with what they
reach (``slicing``). A candidate outside them is *plain* when each entity its data refers
to (a parent, or a reference in an attribute) is fixed, or is *simple*: outside the fixed
entities, not the candidate, and referring to fixed entities only. Its *shape* is its
entity type, the attributes some policy reads (by name: ``GetAttr`` and ``has`` anywhere
in the set) and its tags, with each reference replaced by its slot (first appearance
first), the fixed ones named by uid and the simple ones by their own shape.

Two plain candidates ``p`` and ``q`` of one shape are decided alike (ADR 0035). Cedar
decides a request over its slice as over the whole directory (ADR 0012); the slice of
``p`` is ``p``, its simple neighbours and the fixed entities, and nothing in it refers to
``p`` or to a simple neighbour but ``p`` itself (the fixed entities reach neither; a simple
neighbour reaches fixed entities only). Mapping ``p`` to ``q``, each simple neighbour of
``p`` to ``q``'s in the same slot, and each fixed entity to itself, is then a one-to-one
map of one slice onto the other that keeps every entity's type, read attributes, tags
and ancestors; the policies and the request's other parts name fixed entities only (the
context of a receive holds no entity). Cedar can compare entities only by uid, read
attributes only by a literal name (or tags), cannot list entities or turn a uid into a
string: so every expression evaluates alike in both, up to that map, and so do the
decision and its deciding policies. An unread attribute, and what it refers to, is beyond
every expression, so it takes no part. Error texts may name a uid: the engine reuses a
decision only when Cedar returned no error for it.

The same argument runs between bulletins (ADR 0042). A bulletin's *outline* is its entity
and the entities it reaches outside the base, each as its shape, with references by slot
(or by uid in the base); a candidate's *role* in it is its slot, its uid, or its shape with
neighbours so labelled. Matching slots map one bulletin's slice onto the other's, so
candidates of one role in bulletins of one outline are decided alike.

Anything this module cannot read as above (an entity missing from the directory, a
reference in a form other than ``{"__entity": uid}``) makes the candidate its own class.
Left to the engine: the fixed set, asking Cedar, and re-deciding a class whose decision
carried an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from itertools import chain

from cedarpy import pst

from broker.policy.slicing import Uid, uid_of

__all__ = ["Cut", "Outline", "Shape", "Shapes", "attributes_read", "shape_of"]

_Json = dict[str, object]
# An entity with its uid left out, unread attributes dropped and each reference replaced
# by a slot; and the uids in those slots, in order.
Shape = tuple[str, tuple[Uid, ...]]
# A class of one bulletin's candidates: its members, the kept class it is what is left of
# (None for candidates classed again), and the members taken out of that one.
Cut = tuple[tuple[str, ...], tuple[str, ...] | None, tuple[str, ...]]

# A bulletin's outline (``Shapes.outline``): its shape and those of the entities it
# reaches beyond the base, each reference by its slot (first reached first) or, in the
# base, by uid; and each of those entities' slot.
Outline = tuple[tuple[object, ...], dict[Uid, int]]

_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def attributes_read(tree: pst.PolicySet) -> frozenset[str]:
    """Every attribute name a policy reads or tests (``x.name``, ``x["name"]``,
    ``x has name``), on any entity or record."""
    found: set[str] = set()
    stack: list[object] = [tree]
    while stack:
        value = stack.pop()
        if isinstance(value, pst.GetAttr):
            found.add(value.attr)
        elif isinstance(value, pst.HasAttr):
            found.update(value.attrs)
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, tuple):
            stack.extend(value)
        elif is_dataclass(value) and not isinstance(value, type):
            stack.extend(getattr(value, f.name) for f in fields(value))
    return frozenset(found)


class _Opaque(Exception):
    """An entity whose references cannot all be read (its candidates are their own class)."""


def shape_of(entity: Mapping[str, object], read: frozenset[str]) -> Shape:
    """The shape of a Cedar JSON entity (see the module docstring).

    Raises:
        _Opaque: a reference of another form than ``{"__entity": uid}`` (or a value that
            might be one), or a parent that is not a uid.
    """
    slots: dict[Uid, int] = {}

    def slot(uid: Uid) -> _Json:
        return {"__slot": slots.setdefault(uid, len(slots))}

    def sub(value: object) -> object:
        if isinstance(value, dict):
            if "__entity" in value or "__slot" in value or "type" in value:
                ref = uid_of(value.get("__entity"))
                if ref is None or len(value) != 1:
                    raise _Opaque  # a reference we cannot read, or one Cedar may infer
                return slot(ref)
            return {k: sub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [sub(v) for v in value]
        return value

    uid = uid_of(entity.get("uid"))
    attrs = entity.get("attrs", {})
    parents = entity.get("parents", [])
    if uid is None or not isinstance(attrs, dict) or not isinstance(parents, list):
        raise _Opaque
    kept = {k: sub(v) for k, v in attrs.items() if k in read}
    ups = []
    for parent in parents:
        up = uid_of(parent)
        if up is None:
            raise _Opaque
        ups.append(slot(up))
    rest = {k: sub(v) for k, v in entity.items() if k not in ("uid", "attrs", "parents")}
    return _ENCODE([uid[0], kept, ups, rest]), tuple(slots)


_UNSEEN = object()
_PARTITIONS = 64  # candidate lists whose classes over the base are kept, per engine


@dataclass(frozen=True, eq=False)
class _Partition:
    """One candidate list's classes when only the base entities are fixed, and what a
    bulletin's own fixed entities would change (``Shapes.partition``).

    ``touch`` gives, for an entity, the candidates that have it as a neighbour or as a
    neighbour's neighbour; ``position`` each candidate's place in the list; ``class_of``
    its class, by index into ``classes``, and its place in that class.
    """

    base: frozenset[Uid]
    classes: tuple[tuple[str, ...], ...]
    class_of: dict[str, tuple[int, int]]
    position: dict[str, int]
    touch: dict[Uid, tuple[str, ...]]
    # The classes cut for a bulletin, by its fixed entities beyond the base: a class's
    # members depend on nothing else, so an originator's bulletins get the same tuples.
    cuts: dict[frozenset[Uid], tuple[Cut, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, shapes: Shapes, candidates: tuple[str, ...], base: Collection[Uid]) -> _Partition:
        firsts: dict[str, list[str]] = {}
        for agency, first in shapes.representatives(candidates, base).items():
            firsts.setdefault(first, []).append(agency)
        classes = tuple(tuple(m) for m in firsts.values())
        class_of = {a: (i, j) for i, members in enumerate(classes) for j, a in enumerate(members)}
        touch: dict[Uid, set[str]] = {}
        for agency in class_of:
            shape = shapes._candidates.get(agency)
            for n in shape[1] if shape is not None else ():
                touch.setdefault(n, set()).add(agency)
                far = shapes._shape(n)
                for m in far[1] if far is not None else ():
                    touch.setdefault(m, set()).add(agency)
        return cls(
            frozenset(base),
            classes,
            class_of,
            {a: i for i, a in enumerate(candidates)},
            {uid: tuple(found) for uid, found in touch.items()},
        )


@dataclass(frozen=True, eq=False)
class Shapes:
    """Candidates' shapes for one policy set over one directory, each worked out the
    first time it is needed and kept (a pure function of both: two threads that race to
    fill one entry store the same value).

    ``lookup`` gives a directory entity's Cedar JSON by uid (None if absent); ``read`` is
    ``attributes_read`` of the policy set; ``kind`` the candidates' entity type.
    """

    _lookup: Callable[[Uid], Mapping[str, object] | None] = field(repr=False)
    _read: frozenset[str]
    _kind: str
    _shapes: dict[Uid, Shape | None] = field(default_factory=dict, repr=False)
    _candidates: dict[str, Shape | None] = field(default_factory=dict, repr=False)
    _texts: dict[str, str] = field(default_factory=dict, repr=False)
    _partitions: dict[tuple[str, ...], _Partition] = field(default_factory=dict, repr=False)

    def _shape(self, uid: Uid) -> Shape | None:
        """``uid``'s shape; None if it is absent, opaque or refers to itself (then it is
        its own class as a candidate, and not simple as a neighbour)."""
        try:
            return self._shapes[uid]
        except KeyError:
            pass
        entity = self._lookup(uid)
        found: Shape | None = None
        if entity is not None:
            try:
                found = shape_of(entity, self._read)
            except _Opaque:
                found = None
            if found is not None and uid in found[1]:
                found = None
        self._shapes[uid] = found
        return found

    def representatives(self, candidates: Sequence[str], fixed: Collection[Uid]) -> dict[str, str]:
        """Each candidate with the first candidate of its class: itself when it is not
        plain or is the first of its shape.

        ``fixed``: the uids reachable from the bulletin, what it refers to and the
        entities the policies name (``EntityIndex.reach`` of those roots).
        """
        kind, cache = self._kind, self._candidates
        fixed_here = {ident for t, ident in fixed if t == kind}
        # Each neighbour's label for this bulletin, as a small int (equal labels, equal
        # ints), or None: ints make the class keys cheap to hash.
        labels: dict[Uid, int | None] = {}
        numbers: dict[Hashable, int] = {}
        first: dict[tuple[object, ...], str] = {}
        out: dict[str, str] = {}
        for agency in candidates:
            try:
                shape = cache[agency]
            except KeyError:
                shape = cache[agency] = self._interned(self._shape((kind, agency)))
            if shape is None or agency in fixed_here:
                out[agency] = agency
                continue
            text, neighbours = shape
            key: list[object] = [text]
            for n in neighbours:
                label = labels.get(n, _UNSEEN)
                if label is _UNSEEN:
                    found = self._label(n, fixed)
                    label = labels[n] = None if found is None else numbers.setdefault(
                        found, len(numbers))  # fmt: skip
                if label is None:
                    break
                key.append(label)
            else:
                out[agency] = first.setdefault(tuple(key), agency)
                continue
            out[agency] = agency
        return out

    def partition(
        self, candidates: tuple[str, ...], fixed: Collection[Uid], base: Collection[Uid]
    ) -> list[tuple[str, ...]]:
        """``candidates`` in classes (``cut_classes``, their members only)."""
        return [members for members, _, _ in self.cut_classes(candidates, fixed, base)]

    def cut_classes(
        self, candidates: tuple[str, ...], fixed: Collection[Uid], base: Collection[Uid]
    ) -> list[Cut]:
        """``candidates`` in classes, each in candidate order, its first member first: the
        classes of ``representatives(candidates, fixed)``, except that a class may be cut
        in two (which only costs a Cedar request more).

        ``base`` must be the part of every ``fixed`` that no bulletin changes (what the
        policies name, and what that reaches). The classes over ``base`` are kept per
        candidate list; for one bulletin only the candidates its own fixed entities touch
        are classed again: those that are fixed, and those one of whose neighbours, or a
        neighbour's neighbour, is (the only ones whose class key can differ). So a bulletin
        costs about its touched candidates and the number of classes, not one step per
        candidate.

        Each class comes as a ``Cut``: its members, the kept class it is (what is left of)
        and the members taken out of that one, or, for the touched candidates classed
        again, no kept class. A kept class is the same tuple for every bulletin on this
        list: a caller may key what it derives from one (a set's digest) by identity.
        """
        kept = self._partitions.get(candidates)
        if kept is None:
            kept = _Partition.of(self, candidates, base)
            if len(self._partitions) >= _PARTITIONS:
                self._partitions.clear()
            self._partitions[candidates] = kept
        extra = frozenset(uid for uid in fixed if uid not in kept.base)
        done = kept.cuts.get(extra)
        if done is not None:
            return list(done)
        touched: set[str] = set()
        for uid in extra:
            if uid[0] == self._kind and uid[1] in kept.position:
                touched.add(uid[1])
            touched.update(kept.touch.get(uid, ()))
        if not touched:
            return [(members, members, ()) for members in kept.classes]
        out: list[Cut] = []
        cut: dict[int, list[int]] = {}  # class -> the places in it of its touched members
        for agency in touched:
            i, j = kept.class_of[agency]
            cut.setdefault(i, []).append(j)
        for i, whole in enumerate(kept.classes):
            at = cut.get(i)
            if at is None:
                out.append((whole, whole, ()))
                continue
            at.sort()
            # What lies between the touched members, joined in C: a kept class can hold
            # thousands of agencies, of which a bulletin touches a few dozen.
            bounds = zip((-1, *at), (*at, len(whole)), strict=True)
            members = tuple(chain.from_iterable(whole[a + 1 : b] for a, b in bounds))
            if members:
                out.append((members, whole, tuple(whole[j] for j in at)))
        again = sorted(touched, key=kept.position.__getitem__)
        firsts: dict[str, list[str]] = {}
        for agency, first in self.representatives(again, fixed).items():
            firsts.setdefault(first, []).append(agency)
        out += ((tuple(m), None, ()) for m in firsts.values())
        if len(kept.cuts) >= _PARTITIONS:
            kept.cuts.clear()
        kept.cuts[extra] = tuple(out)
        return out

    def outline(self, entity: Mapping[str, object], base: Collection[Uid]) -> Outline | None:
        """The outline of a request's resource (a bulletin's Cedar JSON entity) over
        ``base`` (as for ``cut_classes``): two bulletins of one outline are the same up to
        renaming the entities they reach outside the base (ADR 0042). None when one of
        those entities is absent, opaque or refers to itself (its bulletin shares nothing).

        The resource's own attributes are all kept, read or not (so that one of an outline
        fits the schema when another does). Beyond it only read attributes and parents are
        followed: what an unread attribute refers to is beyond every expression, as for a
        candidate's shape."""
        attrs = entity.get("attrs")
        if not isinstance(attrs, dict):
            return None
        try:
            text, neighbours = shape_of(entity, frozenset(attrs))
        except _Opaque:
            return None
        slots: dict[Uid, int] = {}
        order: list[Uid] = []

        def canon(uid: Uid) -> object:
            if uid in base:
                return uid
            slot = slots.get(uid)
            if slot is None:
                slot = slots[uid] = len(order)
                order.append(uid)
            return slot

        key: list[object] = [(text, tuple(map(canon, neighbours)))]
        for uid in order:  # grows as entities are reached
            shape = self._shape(uid)
            if shape is None:
                return None
            key.append((shape[0], tuple(map(canon, shape[1]))))
        return tuple(key), slots

    def role(self, agency: str, slots: Mapping[Uid, int], base: Collection[Uid]) -> Hashable | None:
        """What decides ``agency``'s request about a bulletin whose outline gave ``slots``
        (ADR 0042): its slot, if the bulletin reaches it; its uid, if it is in ``base``;
        else its shape with each neighbour by slot, by uid, or, when the neighbour's own
        neighbours all have one of those, by that neighbour's shape so labelled. Two
        candidates of equal roles in bulletins of one outline are decided alike. None: no
        role (a neighbour reaching further, or something opaque)."""
        uid = (self._kind, agency)
        if uid in slots:
            return ("slot", slots[uid])
        if uid in base:
            return ("uid", uid)
        shape = self._candidates.get(agency) or self._interned(self._shape(uid))
        if shape is None:
            return None

        def label(n: Uid) -> Hashable | None:
            if n in slots:
                return slots[n]
            if n in base:
                return n
            return None

        key: list[Hashable] = [shape[0]]
        for n in shape[1]:
            found = label(n)
            if found is None:
                far = self._shape(n)
                if far is None:
                    return None
                inner = tuple(map(label, far[1]))
                if None in inner:
                    return None
                found = ("simple", far[0], inner)
            key.append(found)
        return ("plain", *key)

    def _interned(self, shape: Shape | None) -> Shape | None:
        """A candidate's shape with its text shared by every candidate of that text
        (equal keys then compare by identity; a string keeps its hash). Not a number
        drawn from a counter: two threads could draw the same one for two texts."""
        if shape is None:
            return None
        return self._texts.setdefault(shape[0], shape[0]), shape[1]

    def _label(self, uid: Uid, fixed: Collection[Uid]) -> Hashable | None:
        """A neighbour's label: its uid if fixed, its shape (marked apart from a uid) if
        simple, else None."""
        if uid in fixed:
            return uid
        shape = self._shape(uid)
        if shape is None or not all(n in fixed for n in shape[1]):
            return None
        return ("simple", *shape)
