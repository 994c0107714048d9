"""Entity slicing: the part of the directory one Cedar request can reach.

A Cedar expression gets hold of an entity only from the request (principal, action,
resource, context), from an entity literal in a policy, or from an attribute of an entity
it already holds; ``A in B`` reads the ancestors of ``A``. Cedar cannot list entities,
find an entity's children, or turn an id into a string. So the entities reachable from
those roots, following parents and the entity references in attributes, decide a request
exactly as the whole directory does: every attribute read and every ``in`` finds the same
data in both, and an entity outside the slice is one no expression can name
(ADR 0012 states the argument in full).

``EntityIndex`` keeps each directory entity as its JSON text, with the uids it reaches
(itself, its ancestors and what its attributes refer to, transitively), computed once when
the directory is loaded; ``reach`` and ``text`` join those of a request's roots. Left to
the engine: which roots a request has, parsing the text against the schema, deciding.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from cedarpy import pst

__all__ = ["EntityIndex", "Uid", "literals", "references", "uid_of"]

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


@dataclass(frozen=True, eq=False)
class EntityIndex:
    """A directory's entities, each as compact JSON text, with the uids each reaches.

    Build it with ``EntityIndex.build``; ``texts`` are in the order given there.
    """

    texts: Mapping[Uid, str] = field(repr=False)
    _reach: Mapping[Uid, tuple[Uid, ...]] = field(repr=False)

    @classmethod
    def build(cls, entities: Sequence[_Json]) -> EntityIndex:
        """Index Cedar JSON entities (already checked, unique uids).

        Each entity's text is ``json.dumps`` with sorted keys, no spaces and UTF-8 kept:
        joining them with commas inside brackets gives the list's own canonical text.
        """
        texts: dict[Uid, str] = {}
        edges: dict[Uid, list[Uid]] = {}
        for entity in entities:
            uid = uid_of(entity["uid"])
            if uid is None:
                raise ValueError("an entity has no uid")
            texts[uid] = json.dumps(
                entity, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
            edges[uid] = _direct(entity)
        reach: dict[Uid, tuple[Uid, ...]] = {}
        for root in texts:
            # A walk per entity: reaches are a few jurisdictions deep, and a cycle in the
            # membership graph (which Cedar would refuse) cannot loop here.
            seen = {root: None}
            todo = [root]
            while todo:
                for nxt in edges[todo.pop()]:
                    if nxt in texts and nxt not in seen:
                        seen[nxt] = None
                        todo.append(nxt)
            reach[root] = tuple(seen)
        return cls(texts, reach)

    def __len__(self) -> int:
        return len(self.texts)

    def reach(self, roots: Iterable[Uid]) -> dict[Uid, None]:
        """The indexed uids reachable from ``roots`` (an ordered set); unknown roots add
        nothing, as they are absent from the whole directory too."""
        found: dict[Uid, None] = {}
        for root in roots:
            for uid in self._reach.get(root, ()):
                found[uid] = None
        return found

    def text(self, uids: Iterable[Uid], extra: Sequence[str] = ()) -> str:
        """A Cedar JSON entity list of ``uids`` (as ``reach`` returned them) and ``extra``
        entities, each already JSON text."""
        return "[" + ",".join([*(self.texts[u] for u in uids), *extra]) + "]"
