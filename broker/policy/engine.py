"""Policy decisions: a fail-closed wrapper around Cedar (``cedarpy``).

Loads and lints the policy bundle (``schema.cedarschema``, ``base.cedar`` and
``overrides/<community>.cedar``), holds the directory as one parsed Cedar entity set and as
per-entity slices (``slicing``), and decides ``publish`` and ``receive`` for one bulletin
at a time over the entities each request can reach, and explains them. Anything but a
clean ``Allow`` (``NoDecision``, an evaluation error, malformed facts, an unknown agency)
is a deny. ``permitted_receivers`` leaves out, before Cedar, the candidates the policy set
certainly denies (``prefilter``).

Left to others: reading the directory from the registry (``broker.directory.service``), recording
decisions in the audit log, the CLI and HTTP faces of explain and simulate, and acting on
handling caveats (H0, H2, H3 and the use side of H1 travel with the bulletin: Cedar has no
obligations). The values it decides over and answers are ``broker.policy.model``'s;
``explain`` and ``simulate`` build on them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import cedarpy
from cedarpy import Entities, PolicySet, Schema, pst

from broker.policy.explain import Explanation, explanation
from broker.policy.lint import (
    MAX_ERROR_CHARS,
    NAMESPACE,
    OVERRIDES_DIR,
    lint_file,
    shorten_error,
)
from broker.policy.model import (
    Action,
    AgencyInfo,
    BulletinFacts,
    Decision,
    JurisdictionInfo,
)
from broker.policy.prefilter import Prefilter, ReceiverIndex
from broker.policy.simulate import Change, simulate
from broker.policy.slicing import EntityIndex, Uid, literals, references
from schemas.errors import ConfigError

__all__ = [
    "AgencyInfo",
    "BulletinFacts",
    "Change",
    "Decision",
    "DirectorySnapshot",
    "Explanation",
    "JurisdictionInfo",
    "PolicyBundle",
    "PolicyEngine",
    "PolicyLoadError",
    "simulate",
]


_SCHEMA_FILE = "schema.cedarschema"
_BASE_FILE = "base.cedar"
_DECISION_CACHE = 4096  # distinct (facts, action, candidates, second) kept per engine
_SECTORS = frozenset({"police", "military", "foreign", "justice", "regional-centre", "auditor"})
_STATUSES = frozenset({"active", "suspended", "revoked"})
_GRADE = re.compile(r"[A-F][1-6]")
_POSITIONAL_ID = re.compile(r"\bpolicy\d+\b")
# Cedar parses an entity of a slice in about 45 us and copies one of the parsed whole
# directory in about 1.5 us (10,000 agencies): a request whose slice holds more than 1/32
# of the directory is decided over the whole directory plus the bulletin. Both give the
# same decisions (ADR 0012); only the cost differs.
_SLICE_ENTITY_COST = 32

_Json = dict[str, object]
_AGENCY = f"{NAMESPACE}::Agency"
_JURISDICTION = f"{NAMESPACE}::Jurisdiction"


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
        derived = (literals(tree), Prefilter.derive(tree))
        return cls(version, tuple(texts), canonical, *handles, *derived)


@dataclass(frozen=True, eq=False)
class DirectorySnapshot:
    """The directory as one parsed, schema-checked Cedar entity set, and as the per-entity
    texts and reaches slices are cut from. Use ``build``."""

    version: str
    _entities: Entities = field(repr=False)
    _agencies: dict[str, AgencyInfo] = field(repr=False)
    _schema_digest: str = field(repr=False)
    _index: EntityIndex = field(repr=False)
    _receivers: ReceiverIndex = field(repr=False)

    @classmethod
    def build(
        cls,
        jurisdictions: Sequence[JurisdictionInfo],
        agencies: Sequence[AgencyInfo],
        bundle: PolicyBundle,
    ) -> DirectorySnapshot:
        """Check the directory, turn it into Cedar entities, parse them once, and index
        them for slices and for the prefilter.

        Raises:
            ConfigError: a record has a wrong type or value, a duplicate id or an unknown
                parent, or the entities do not conform to the bundle's schema.
        """
        problems = _check_directory(jurisdictions, agencies)
        if problems:
            shown = "; ".join(problems[:10]) + ("; ..." if len(problems) > 10 else "")
            raise ConfigError(f"directory rejected: {shown}", code="directory")
        entities = [_jurisdiction_entity(j) for j in jurisdictions]
        entities += [_agency_entity(a) for a in agencies]
        entities.sort(key=lambda e: json.dumps(e["uid"], sort_keys=True))
        text = json.dumps(entities, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        try:
            handle = Entities.from_json_str(text, bundle._schema)
        except ValueError as exc:
            raise ConfigError(
                f"directory does not conform to the policy schema: {shorten_error(str(exc))}",
                code="directory",
            ) from exc
        version = hashlib.sha256(text.encode()).hexdigest()[:16]
        agency_map = {a.id: a for a in agencies}
        codes = {j.code: j for j in jurisdictions}

        def lookup(uid: Uid) -> _Json | None:
            # The entities just checked, built again from the same frozen records.
            kind, ident = uid
            if kind == _JURISDICTION and ident in codes:
                return _jurisdiction_entity(codes[ident])
            if kind == _AGENCY and ident in agency_map:
                return _agency_entity(agency_map[ident])
            return None

        indexes = (EntityIndex(lookup, len(entities)), ReceiverIndex.build(entities))
        return cls(version, handle, agency_map, bundle._schema_digest, *indexes)

    def agency(self, agency_id: str) -> AgencyInfo | None:
        """The agency ``agency_id``, or None if the directory has no such agency."""
        return self._agencies.get(agency_id)


def _check_directory(
    jurisdictions: Sequence[JurisdictionInfo], agencies: Sequence[AgencyInfo]
) -> list[str]:
    """What Cedar's schema cannot see: duplicates, value ranges and references."""
    problems: list[str] = []
    kinds = {j.code: j.kind for j in jurisdictions}
    if len(kinds) != len(jurisdictions):
        problems.append("duplicate jurisdiction code")
    for j in jurisdictions:
        parents_ok = isinstance(j.parents, tuple) and set(j.parents) <= kinds.keys() - {j.code}
        if j.kind not in ("state", "community") or not parents_ok:
            problems.append(f"jurisdiction {j.code!r}: bad kind or unknown parent")
    if len({a.id for a in agencies}) != len(agencies):
        problems.append("duplicate agency id")
    for a in agencies:
        where = f"agency {a.id!r}"
        if a.sector not in _SECTORS or a.status not in _STATUSES:
            problems.append(f"{where}: unknown sector or status")
        if not isinstance(a.topics, frozenset) or not isinstance(a.communities, tuple):
            problems.append(f"{where}: topics must be a frozenset, communities a tuple")
        if type(a.clearance) is not int or not 0 <= a.clearance <= 3:
            problems.append(f"{where}: clearance must be an int 0..3")
        if a.state is not None and kinds.get(a.state) != "state":
            problems.append(f"{where}: {a.state!r} is not a known state")
        if any(kinds.get(c) != "community" for c in a.communities):
            problems.append(f"{where}: unknown community in {a.communities!r}")
        grade = a.min_source_grade
        if grade is not None and not (isinstance(grade, str) and _GRADE.fullmatch(grade)):
            problems.append(f"{where}: min_source_grade must be 'A1'..'F6' or None")
    return problems


def _uid(kind: str, ident: str) -> _Json:
    return {"type": f"{NAMESPACE}::{kind}", "id": ident}


def _ref(kind: str, ident: str) -> _Json:
    return {"__entity": _uid(kind, ident)}


def _grade(grade: str) -> _Json:
    """Admiralty "B2" as Longs, lower is better: reliability A..F = 1..6, credibility 1..6."""
    return {"reliability": "ABCDEF".index(grade[0]) + 1, "credibility": int(grade[1])}


def _jurisdiction_entity(j: JurisdictionInfo) -> _Json:
    return {
        "uid": _uid("Jurisdiction", j.code),
        "attrs": {"kind": j.kind, "name": j.name},
        "parents": [_uid("Jurisdiction", p) for p in sorted(j.parents)],
    }


def _agency_entity(a: AgencyInfo) -> _Json:
    attrs: _Json = {
        "name": a.name,
        "sector": a.sector,
        "status": a.status,
        "clearance": a.clearance,
        "topics": sorted(a.topics),
    }
    if a.state is not None:
        attrs["home"] = _ref("Jurisdiction", a.state)
    if a.min_source_grade is not None:
        attrs["minSourceGrade"] = _grade(a.min_source_grade)
    parents = [a.state] if a.state is not None else sorted(a.communities)
    return {
        "uid": _uid("Agency", a.id),
        "attrs": attrs,
        "parents": [_uid("Jurisdiction", p) for p in parents],
    }


def _bulletin_entity(facts: BulletinFacts) -> _Json:
    # Precedence and handling_note are not policy inputs (delivery order; caveat text).
    labels = facts.labels
    attrs: _Json = {
        "topic": labels.topic,
        "classification": labels.classification.level,
        "tlp": labels.tlp.value,
        "releasableTo": [_ref("Jurisdiction", c) for c in labels.rel_to],
        "namedRecipients": [_ref("Agency", a) for a in labels.named],
        "handling": [h.value for h in labels.handling],
        "judicialConsent": [_ref("Agency", a) for a in labels.judicial_consent],
        "originator": _ref("Agency", facts.originator),
    }
    if labels.source_grade is not None:
        attrs["sourceGrade"] = _grade(labels.source_grade)
    if facts.origin_state is not None:
        attrs["originState"] = _ref("Jurisdiction", facts.origin_state)
    if facts.not_before is not None:
        attrs["embargoUntil"] = facts.not_before
    if facts.expires_at is not None:
        attrs["expiresAt"] = facts.expires_at
    return {"uid": _uid("Bulletin", facts.bulletin_id), "attrs": attrs, "parents": []}


def _cacheable(facts: BulletinFacts, now: int) -> bool:
    """Only well-typed requests share decisions: a malformed id or time is decided (and
    refused) on its own."""
    return type(now) is int and type(facts.bulletin_id) is str and facts.bulletin_id != ""


class _Refused(Exception):
    """A whole request is denied before or by Cedar (message is the decision's error)."""


class PolicyEngine:
    """Decides publish and receive for bulletins against one bundle and directory.

    ``entities`` says what each Cedar batch runs over: ``"auto"`` the slice of the
    directory its requests can reach, or the whole directory when that slice would hold
    more than 1/32 of it (whichever Cedar builds faster); ``"slice"`` and ``"whole"``
    always one of them (the tests prove they decide alike).
    """

    def __init__(
        self,
        bundle: PolicyBundle,
        directory: DirectorySnapshot,
        *,
        entities: Literal["auto", "slice", "whole"] = "auto",
    ) -> None:
        if directory._schema_digest != bundle._schema_digest:
            raise ValueError("the directory was built against another policy schema")
        self._bundle = bundle
        self._directory = directory
        self._slice_limit = {"auto": len(directory._index) / _SLICE_ENTITY_COST,
                             "slice": math.inf, "whole": -1.0}[entities]  # fmt: skip
        # Every request's slice holds the entities the policies name (and what they reach).
        self._pinned = tuple(directory._index.reach(bundle._literals))
        self._memo: dict[tuple[BulletinFacts, Action, tuple[str, ...], int], tuple[Decision, ...]]
        self._memo = {}

    @property
    def bundle(self) -> PolicyBundle:
        """The policy bundle this engine decides with."""
        return self._bundle

    @property
    def directory(self) -> DirectorySnapshot:
        """The directory snapshot this engine decides over."""
        return self._directory

    def decide_publish(self, facts: BulletinFacts, now: int) -> Decision:
        """May ``facts.originator`` publish this bulletin at ``now``? Never raises."""
        return self._cached(facts, "publish", (facts.originator,), now)[0]

    def decide_receive(
        self, facts: BulletinFacts, candidates: Sequence[str], now: int
    ) -> list[Decision]:
        """One decision per candidate, in order, from one Cedar batch. Never raises."""
        return list(self._cached(facts, "receive", tuple(candidates), now))

    def permitted_receivers(
        self, facts: BulletinFacts, candidates: Sequence[str], now: int
    ) -> list[str]:
        """The candidates that may receive this bulletin at ``now``, in order: exactly those
        ``decide_receive`` allows. Never raises.

        Candidates the policy set certainly denies (the rules ``prefilter_rules`` names) are
        left out before Cedar, which decides the rest; so use this where only the permitted
        set is needed, and ``decide_receive`` where denials and their reasons are.
        """
        try:
            bulletin = _bulletin_entity(facts)
        except (AttributeError, IndexError, TypeError, ValueError):
            kept = list(candidates)  # refused whole by the engine, as decide_receive does
        else:
            receivers = self._directory._receivers
            kept = self._bundle._prefilter.survivors(bulletin, candidates, receivers)
        return [d.agency for d in self._cached(facts, "receive", tuple(kept), now) if d.allowed]

    def _cached(
        self, facts: BulletinFacts, action: Action, agencies: tuple[str, ...], now: int
    ) -> tuple[Decision, ...]:
        """Cedar is deterministic, the bundle and directory are fixed for this engine, and
        no policy may name one bulletin (the linter refuses it): so bulletins whose facts
        differ only in their id get the same decisions in the same second. A relay batch
        of bulletins with the same labels asks Cedar once. Bounded; cleared when full."""
        if not _cacheable(facts, now):
            return tuple(self._decide(facts, action, agencies, now)[0])
        key = (replace(facts, bulletin_id=""), action, agencies, now)
        try:
            hit = self._memo.get(key)
        except TypeError:  # an unhashable field: malformed facts, decided on their own
            return tuple(self._decide(facts, action, agencies, now)[0])
        if hit is None:
            hit = tuple(self._decide(facts, action, agencies, now)[0])
            if len(self._memo) >= _DECISION_CACHE:
                self._memo.clear()
            self._memo[key] = hit
        return hit

    def explain(
        self,
        facts: BulletinFacts,
        candidates: Sequence[str],
        now: int,
        action: Action = "receive",
    ) -> list[Explanation]:
        """Why each candidate may or may not take ``action`` on this bulletin. Never raises.

        Two evaluations: the full policy set gives the decision and its deciding policies;
        the permits alone give the grants that matched, whether or not a guard blocked.

        Returns:
            One ``Explanation`` per candidate, in order; an unknown agency, malformed facts
            or an evaluation error explain as a deny carrying the error.
        """
        bundle = self._bundle
        decisions, grants = self._decide(facts, action, candidates, now, bundle._grants)
        return [explanation(d, g) for d, g in zip(decisions, grants, strict=True)]

    def _decide(
        self,
        facts: BulletinFacts,
        action: Action,
        agencies: Sequence[str],
        now: int,
        *also: PolicySet,
    ) -> list[list[Decision]]:
        """Decisions under the bundle's policies, then under each of ``also``, over the
        same entities."""
        known = [a for a in agencies if self._directory.agency(a) is not None]
        policy_sets = (self._bundle._policies, *also)
        try:
            batches = self._evaluate(facts, action, known, now, policy_sets)
        except _Refused as exc:
            refused = [self._decision(a, action, False, errors=[str(exc)]) for a in agencies]
            return [refused for _ in policy_sets]
        out = []
        for batch in batches:
            results = iter(batch)
            out.append([
                self._convert(a, action, next(results))
                if self._directory.agency(a) is not None
                else self._decision(a, action, False, errors=["unknown agency"])
                for a in agencies
            ])  # fmt: skip
        return out

    def _evaluate(
        self,
        facts: BulletinFacts,
        action: Action,
        known: list[str],
        now: int,
        policy_sets: Sequence[PolicySet],
    ) -> list[list[cedarpy.AuthzResult]]:
        # 1. `now` must be a plain int (bool is an int in Python, not in Cedar).
        if type(now) is not int:
            raise _Refused("now must be an int (epoch seconds)")
        # 2. The bulletin joins the entities its requests can reach, checked against the
        #    schema (in a slice, the directory's entities are checked again too).
        try:
            entities = self._entities_for(_bulletin_entity(facts), known)
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise _Refused(f"bulletin facts rejected: {shorten_error(str(exc))}") from exc
        # 3. Known agencies go to Cedar in one batch (unknown ones are denied by the caller).
        resource = _uid("Bulletin", facts.bulletin_id)
        requests: list[_Json] = [
            {"principal": _uid("Agency", a), "action": _uid("Action", action),
             "resource": resource, "context": {"now": now}, "correlation_id": a}
            for a in known
        ]  # fmt: skip
        batches = []
        for policies in policy_sets:
            try:
                results = cedarpy.is_authorized_batch(
                    requests, policies, entities, self._bundle._schema
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise _Refused(f"cedar failed: {shorten_error(str(exc))}") from exc
            if len(results) != len(requests):
                raise _Refused("cedar returned a short batch")
            batches.append(results)
        return batches

    def _entities_for(self, bulletin: _Json, principals: Sequence[str]) -> Entities:
        """The bulletin with the slice of the directory its requests can reach: the
        principals, what the bulletin refers to (originator, named and consenting agencies,
        releasability, origin state) and the entities the policies name, each with its
        ancestors and references, transitively (``slicing``). The context holds no entity.

        Raises:
            TypeError, ValueError: the bulletin does not serialise or fit the schema.
        """
        index = self._directory._index
        text = json.dumps(bulletin, sort_keys=True, separators=(",", ":"), allow_nan=False)
        roots = [*self._pinned, *references(bulletin["attrs"])]
        roots += [(_AGENCY, a) for a in principals]
        uids = index.reach(roots)
        if len(uids) > self._slice_limit:
            return self._directory._entities.with_added_json_str(f"[{text}]", self._bundle._schema)
        return Entities.from_json_str(index.text(uids, [text]), self._bundle._schema)

    def _convert(self, agency: str, action: Action, result: cedarpy.AuthzResult) -> Decision:
        # 4. Fail closed: allow only a clean Allow (no errors) for the agency we asked about.
        errors = [self._clean(e) for e in result.diagnostics.errors]
        if result.correlation_id != agency and not errors:
            errors.append("cedar answered for another request")
        if result.decision == cedarpy.Decision.NoDecision and not errors:
            errors.append("cedar returned no decision")
        cedar_allowed = result.decision == cedarpy.Decision.Allow
        allowed = cedar_allowed and not errors
        # 5. An allow overturned by errors was decided by no policy: report none.
        pids = [] if cedar_allowed and not allowed else result.diagnostics.reasons
        labels = sorted(self._bundle._labels.get(pid, (pid, "")) for pid in pids)
        return self._decision(agency, action, allowed, labels, errors)

    def _clean(self, error: str) -> str:
        """Map Cedar's positional ``policyN`` to its ``@id``; withhold entity JSON."""
        labels = self._bundle._labels
        named = _POSITIONAL_ID.sub(lambda m: labels.get(m[0], (m[0], ""))[0], error)
        return shorten_error(named)

    def _decision(
        self,
        agency: str,
        action: Action,
        allowed: bool,
        labels: Sequence[tuple[str, str]] = (),
        errors: Sequence[str] = (),
    ) -> Decision:
        ids, reasons = tuple(i for i, _ in labels), tuple(r for _, r in labels)
        versions = (self._bundle.version, self._directory.version)
        shortened = tuple(e[:MAX_ERROR_CHARS] for e in errors)
        return Decision(agency, action, allowed, ids, reasons, *versions, shortened)
