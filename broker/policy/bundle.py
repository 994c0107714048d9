"""The policy bundle: the schema, ``base.cedar`` and ``overrides/<community>.cedar``,
loaded, linted (``lint``) and validated at once, as one immutable value.

Also derived when a bundle loads: the entities its policies name (every slice holds them,
``slicing``), the prefilter rules it proves (``prefilter``) and the attributes it reads
(``classes``). Left to others: the
directory (``entities``) and deciding (``engine``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cedarpy import PolicySet, Schema, pst

from broker.policy.classes import attributes_read
from broker.policy.lint import OVERRIDES_DIR, lint_file, shorten_error
from broker.policy.prefilter import Prefilter
from broker.policy.slicing import Uid, literals
from schemas.errors import ConfigError

__all__ = ["PolicyBundle", "PolicyLoadError"]

_SCHEMA_FILE = "schema.cedarschema"
_BASE_FILE = "base.cedar"


class PolicyLoadError(ConfigError):
    """The policy bundle is unusable; ``problems`` lists each fault.

    Each problem reads ``file[:line]: [@id: ]what``, e.g.
    ``base.cedar:88: guard.clearance: attribute `clearence` ... not found``.
    """

    default_code = "policy_bundle"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("policy bundle rejected: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, eq=False)
class PolicyBundle:
    """A linted, schema-validated policy set: an immutable value. Use ``PolicyBundle.load``.

    ``text`` is the bundle in canonical form (the schema's digest, then each policy file
    after a ``// ---- <file> (<n> bytes)`` line); ``version`` is its SHA-256, 16 hex.
    """

    version: str
    files: tuple[str, ...]
    text: str = field(repr=False)
    _schema: Schema = field(repr=False)
    _schema_digest: str = field(repr=False)
    _policies: PolicySet = field(repr=False)
    _grants: PolicySet = field(repr=False)  # the permits alone, for explain
    _labels: Mapping[str, tuple[str, str]] = field(repr=False)  # positional -> (@id, @reason)
    _literals: frozenset[Uid] = field(repr=False)  # entities the policies name
    _prefilter: Prefilter = field(repr=False)
    _read: frozenset[str] = field(repr=False)  # attribute names the policies read

    @property
    def reasons(self) -> dict[str, str]:
        """Every policy's ``@reason`` by its ``@id``, in bundle order."""
        return dict(self._labels.values())

    @property
    def prefilter_rules(self) -> tuple[str, ...]:
        """The prefilter rules this set proves (``clearance``, ``releasability``)."""
        return self._prefilter.rules

    @classmethod
    def load(cls, root: Path) -> PolicyBundle:
        """Load the bundle under ``root``; any problem rejects all of it.

        Checks: 1. every file reads and parses on its own; 2. canonical Cedar format;
        3. no templates; 4. every policy has a unique ``@id`` and a ``@reason``; 5. every
        policy in ``overrides/<c>.cedar`` has an ``@id`` starting ``<c>.`` and references
        ``Istmo::Jurisdiction::"<C>"``; 6. strict validation against the schema.

        Raises:
            PolicyLoadError: with one entry per problem, each naming the file, and the
                line and ``@id`` of the policy where there is one.
        """
        problems: list[str] = []
        overrides = sorted((root / OVERRIDES_DIR).glob("*.cedar"))
        rels = [_BASE_FILE, *(f"{OVERRIDES_DIR}/{p.name}" for p in overrides)]
        texts: dict[str, str] = {}
        for rel in [_SCHEMA_FILE, *rels]:
            try:
                texts[rel] = (root / rel).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{rel}: cannot read ({type(exc).__name__})")
        if problems:
            raise PolicyLoadError(problems)
        schema_text = texts.pop(_SCHEMA_FILE)
        try:
            schema = Schema.from_str(schema_text)
        except ValueError as exc:
            raise PolicyLoadError([f"{_SCHEMA_FILE}: {shorten_error(str(exc))}"]) from exc
        seen: dict[str, str] = {}
        for rel, text in texts.items():
            problems += lint_file(rel, text, schema, seen)
        if problems:
            raise PolicyLoadError(problems)

        schema_digest = hashlib.sha256(schema_text.encode()).hexdigest()
        parts = [f"// ---- {_SCHEMA_FILE} sha256:{schema_digest}\n"]
        for rel, text in texts.items():
            parts.append(f"// ---- {rel} ({len(text.encode())} bytes)\n{text}")
        canonical = "".join(parts)
        policies = PolicySet.from_str(canonical)
        tree = policies.to_pst()
        labels = {
            pid: (p.annotations["id"], p.annotations["reason"])
            for pid, p in tree.static_policies.items()
        }
        permits = {pid: p for pid, p in tree.static_policies.items() if p.effect == "permit"}
        grants = PolicySet.from_pst(
            pst.PolicySet(pst.FrozenMap(), pst.FrozenMap(permits), template_links=())
        )
        version = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        handles = (schema, schema_digest, policies, grants, MappingProxyType(labels))
        derived = (literals(tree), Prefilter.derive(tree), attributes_read(tree))
        return cls(version, tuple(texts), canonical, *handles, *derived)
