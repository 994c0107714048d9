"""Entity slicing: the part of the directory one Cedar request can reach.

A Cedar expression gets hold of an entity only from the request (principal, action,
resource, context), from an entity literal in a policy, or from an attribute of an entity
it already holds; ``A in B`` reads the ancestors of ``A``. Cedar cannot list entities,
find an entity's children, or turn an id into a string. So the entities reachable from
those roots, following parents and the entity references in attributes, decide a request
exactly as the whole directory does: every attribute read and every ``in`` finds the same
data in both, and an entity outside the slice is one no expression can name
(ADR 0012 states the argument in full).

``EntityIndex`` keeps each directory entity with its JSON text and the uids it reaches
(itself, its ancestors and what its attributes refer to, transitively), each worked out
once; ``reach`` and ``text`` join those of a request's roots. Left to the engine: which
roots a request has, parsing the text against the schema, deciding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from cedarpy import pst

__all__ = ["EntityIndex", "Uid", "entity_text", "literals", "references", "uid_of"]

Uid = tuple[str, str]  # (entity type with its namespace, id), e.g. ("Istmo::Agency", "gt-police")
_Json = dict[str, object]


def uid_of(value: object) -> Uid | None:
    """The uid of a Cedar JSON uid object ``{"type": ..., "id": ...}``, else None."""
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        ident = value.get("id")
        if isinstance(ident, str):
            return (value["type"], ident)
    return None


def references(value: object) -> Iterator[Uid]:
    """Every entity reference (``{"__entity": uid}``) in an attribute value, at any depth
    of sets and records."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = uid_of(item.get("__entity")) if "__entity" in item else None
            if ref is not None:
                yield ref
            else:
                stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def literals(tree: pst.PolicySet) -> frozenset[Uid]:
    """The entity uids the policies name (``Istmo::Jurisdiction::"SICA"``, actions)."""
    named = pst.entity_uids(tree.static_policies) | pst.entity_uids(tree.templates)
    return frozenset((str(u.type), u.id) for u in named)


def _direct(entity: Mapping[str, object]) -> list[Uid]:
    parents = entity.get("parents")
    found = [u for u in map(uid_of, parents if isinstance(parents, list) else []) if u]
    return found + list(references(entity.get("attrs")))


# A Cedar JSON entity's compact text, as the whole directory's list holds it.
entity_text = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True, eq=False)
class EntityIndex:
    """A directory's entities by uid, each with its compact JSON text and the uids it
    reaches. Use ``EntityIndex.build``, or give ``lookup`` (uid to Cedar JSON entity, or
    None) and the number of entities.

    Text and reach are worked out the first time a slice needs them and kept (a reach
    stops at a neighbour's reach already known: a whole closure, so this is exact). So
    loading a directory costs nothing more, a request never more than its own slice,
    and what is kept is strings and tuples of strings, which the garbage collector does
    not walk. Both are pure functions of the snapshot: two threads that race to fill one
    entry store the same value.
    """

    _lookup: Callable[[Uid], Mapping[str, object] | None] = field(repr=False)
    _size: int
    _texts: dict[Uid, str] = field(default_factory=dict, repr=False)
    _reach: dict[Uid, tuple[Uid, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, entities: Sequence[_Json]) -> EntityIndex:
        """Index Cedar JSON entities (already checked: unique uids, no cycle)."""
        by_uid: dict[Uid, _Json] = {}
        for entity in entities:
            uid = uid_of(entity["uid"])
            if uid is None:
                raise ValueError("an entity has no uid")
            by_uid[uid] = entity
        return cls(by_uid.get, len(by_uid))

    def __len__(self) -> int:
        return self._size

    def entity(self, uid: Uid) -> Mapping[str, object] | None:
        """The Cedar JSON entity ``uid``, or None if the directory has none."""
        return self._lookup(uid)

    def reach(self, roots: Iterable[Uid]) -> dict[Uid, None]:
        """The indexed uids reachable from ``roots`` (an ordered set); unknown roots add
        nothing, as they are absent from the whole directory too."""
        found: dict[Uid, None] = {}
        for root in roots:
            known = self._reach.get(root)
            if known is None:
                entity = self._lookup(root)
                if entity is None:
                    continue
                known = self._walk(root, entity)
            found.update(dict.fromkeys(known))
        return found

    def _walk(self, root: Uid, entity: Mapping[str, object]) -> tuple[Uid, ...]:
        seen = {root: None}
        todo = [entity]
        while todo:
            for nxt in _direct(todo.pop()):
                if nxt in seen:
                    continue
                done = self._reach.get(nxt)
                if done is not None:
                    seen.update(dict.fromkeys(done))
                    continue
                found = self._lookup(nxt)
                if found is not None:
                    seen[nxt] = None
                    todo.append(found)
        reach = self._reach[root] = tuple(seen)
        return reach

    def text(self, uids: Iterable[Uid], extra: Sequence[str] = ()) -> str:
        """A Cedar JSON entity list of ``uids`` (as ``reach`` returned them) and ``extra``
        entities, each already JSON text."""
        parts = []
        for uid in uids:
            text = self._texts.get(uid)
            if text is None:
                text = self._texts[uid] = entity_text(self._lookup(uid))
            parts.append(text)
        return "[" + ",".join([*parts, *extra]) + "]"
