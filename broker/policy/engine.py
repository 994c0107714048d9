"""Policy decisions: a fail-closed wrapper around Cedar (``cedarpy``).

Decides ``publish`` and ``receive`` for one bulletin at a time with a policy bundle
(``bundle``) over the directory (``entities``), giving Cedar only the entities each batch
can reach (``slicing``) and one request per class of candidates the policies cannot tell
apart (``classes``), taking what it decided in the same second for a bulletin of the same
outline (ADR 0042), and explains them. Anything but a clean ``Allow``
(``NoDecision``, an evaluation error, malformed facts, an unknown agency) is a deny.
``permitted_receivers`` leaves out, before Cedar, the candidates the policy set certainly
denies (``prefilter``). Re-exports the package's public names.

Left to others: reading the directory from the registry (``broker.directory.service``), recording
decisions in the audit log, the CLI and HTTP faces of explain and simulate, and acting on
handling caveats (H0, H2, H3 and the use side of H1 travel with the bulletin: Cedar has no
obligations). The values it decides over and answers are ``broker.policy.model``'s;
``explain`` and ``simulate`` build on them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from typing import Literal, TypeVar

import cedarpy
from cedarpy import Entities, PolicySet

from broker.policy.bundle import PolicyBundle, PolicyLoadError
from broker.policy.classes import Cut, Outline, Shapes
from broker.policy.entities import AGENCY, DirectorySnapshot, bulletin_entity, entity_uid
from broker.policy.explain import Explanation, explanation
from broker.policy.lint import MAX_ERROR_CHARS, shorten_error
from broker.policy.model import (
    Action,
    AgencyInfo,
    BulletinFacts,
    DecidedAlike,
    Decision,
    JurisdictionInfo,
    ReplyFacts,
)
from broker.policy.simulate import Change, simulate
from broker.policy.slicing import Uid, references

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
    "ReplyFacts",
    "simulate",
]


_DECISION_CACHE = 4096  # distinct (facts, action, candidates, second) kept per engine
_SHARED = 16384  # decisions kept for other bulletins of one outline (ADR 0042), per engine
_KEPT_LISTS = 64  # candidate lists kept without duplicates and unknown agencies, per engine
_POSITIONAL_ID = re.compile(r"\bpolicy\d+\b")
# Cedar parses an entity of a slice in about 45 us and copies one of the parsed whole
# directory in about 1.5 us (10,000 agencies): a request whose slice holds more than 1/32
# of the directory is decided over the whole directory plus the bulletin. Both give the
# same decisions (ADR 0012); only the cost differs.
_SLICE_ENTITY_COST = 32
_KEPT_SLICES = 256  # parsed slices of the directory an engine keeps (each under 1/32 of it)

_Json = dict[str, object]
_MemoKey = tuple[BulletinFacts, Action, tuple[str, ...], int]
# A bulletin's outline, the action, the second and a candidate's role (ADR 0042).
_ShareKey = tuple[tuple[object, ...], Action, int, Hashable]
_Result = cedarpy.AuthzResult | Decision
_T = TypeVar("_T")


def _referenced_agency(context: _Json) -> str:
    """The agency a forward's context names (its entity joins the slice)."""
    ref = context["recipient"]
    uid = ref["__entity"] if isinstance(ref, dict) else None
    if not isinstance(uid, dict):
        raise TypeError("a forward's context names its recipient as an entity")
    return str(uid["id"])


def _each(classes: Sequence[DecidedAlike], agencies: Sequence[str]) -> list[Decision]:
    """One decision per agency of ``agencies``, in order, from the classes they are in."""
    own = {d.agency: d for c in classes for d in c.each()}
    return [own[a] for a in agencies]


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
    always one of them (the tests prove they decide alike). ``classes``: ask Cedar once
    per class of receive candidates the policy set cannot tell apart (``classes``; on by
    default) or once per candidate; both decide alike.
    """

    def __init__(
        self,
        bundle: PolicyBundle,
        directory: DirectorySnapshot,
        *,
        entities: Literal["auto", "slice", "whole"] = "auto",
        classes: bool = True,
    ) -> None:
        if directory._schema_digest != bundle._schema_digest:
            raise ValueError("the directory was built against another policy schema")
        self._bundle = bundle
        self._directory = directory
        self._slice_limit = {"auto": len(directory._index) / _SLICE_ENTITY_COST,
                             "slice": math.inf, "whole": -1.0}[entities]  # fmt: skip
        # Every request's slice holds the entities the policies name (and what they reach).
        self._pinned = tuple(directory._index.reach(bundle._literals))
        self._memo: dict[_MemoKey, tuple[Decision, ...]] = {}
        self._allowed_memo: dict[_MemoKey, tuple[str, ...]] = {}  # permitted_receivers'
        self._class_memo: dict[_MemoKey, tuple[DecidedAlike, ...]] = {}  # receive_classes'
        self._shared: dict[_ShareKey, Decision] = {}  # by outline and role (ADR 0042)
        self.shared_taken = 0  # classes decided by a decision made for another bulletin
        self._lists: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._base = frozenset(self._pinned)  # in every request's fixed entities
        self._slices: dict[frozenset[Uid], Entities] = {}  # parsed, by their uids
        # Candidates the policies cannot tell apart share one Cedar request (ADR 0035), and
        # bulletins of one outline share decisions (ADR 0042).
        self._shapes = Shapes(directory._index.entity, bundle._read, AGENCY) if classes else None

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

    def receive_classes(
        self, facts: BulletinFacts, candidates: Sequence[str], now: int
    ) -> tuple[DecidedAlike, ...]:
        """``decide_receive``'s decisions as the engine made them: the candidates in
        classes decided alike, each candidate in one class (duplicates once). Building no
        decision per candidate, a caller that records by outcome (the relay) pays per
        class. Equal calls in the same second give the same tuple. Never raises."""
        agencies = tuple(candidates)

        def decide() -> tuple[DecidedAlike, ...]:
            return self._decide_classes(facts, "receive", agencies, now)[0]

        return self._memoised(self._class_memo, facts, "receive", agencies, now, decide)

    def decide_forward(
        self, facts: BulletinFacts, forwarder: str, recipient: str, now: int, *, consent: bool
    ) -> Decision:
        """May ``forwarder`` pass this bulletin on to ``recipient`` at ``now``, with the
        originator's checked consent (``consent``) or without it? Never raises. The
        decision's ``agency`` is the forwarder (the principal); not cached (a forward is
        rare).
        """
        if self._directory.agency(recipient) is None:
            return self._decision(forwarder, "forward", False, errors=["unknown agency"])
        context = {"now": now, "recipient": {"__entity": entity_uid("Agency", recipient)},
                   "originatorConsent": consent}  # fmt: skip
        return self._decide(facts, "forward", [forwarder], now, context=context)[0][0]

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
            bulletin = bulletin_entity(facts)
        except (AttributeError, IndexError, TypeError, ValueError):
            kept = list(candidates)  # refused whole by the engine, as decide_receive does
        else:
            receivers = self._directory._receivers
            kept = self._bundle._prefilter.survivors(bulletin, candidates, receivers)
        asked = tuple(kept)

        def allowed() -> tuple[str, ...]:
            classes = self._decide_classes(facts, "receive", asked, now)[0]
            found = set().union(*(c.agencies for c in classes if c.decision.allowed))
            return tuple(filter(found.__contains__, asked))

        found = self._memoised(self._allowed_memo, facts, "receive", asked, now, allowed)
        return list(found)

    def _cached(
        self, facts: BulletinFacts, action: Action, agencies: tuple[str, ...], now: int
    ) -> tuple[Decision, ...]:
        def decide() -> tuple[Decision, ...]:
            if action == "receive":
                return tuple(_each(self.receive_classes(facts, agencies, now), agencies))
            return tuple(self._decide(facts, action, agencies, now)[0])

        return self._memoised(self._memo, facts, action, agencies, now, decide)

    @staticmethod
    def _memoised(
        memo: dict[_MemoKey, _T],
        facts: BulletinFacts,
        action: Action,
        agencies: tuple[str, ...],
        now: int,
        compute: Callable[[], _T],
    ) -> _T:
        """Cedar is deterministic, the bundle and directory are fixed for this engine, and
        no policy may name one bulletin (the linter refuses it): so bulletins whose facts
        differ only in their id get the same decisions in the same second. A relay batch
        of bulletins with the same labels asks Cedar once. Bounded; cleared when full."""
        if not _cacheable(facts, now):
            return compute()
        key = (replace(facts, bulletin_id=""), action, agencies, now)
        try:
            hit = memo.get(key)
        except TypeError:  # an unhashable field: malformed facts, decided on their own
            return compute()
        if hit is None:
            hit = compute()
            if len(memo) >= _DECISION_CACHE:
                memo.clear()
            memo[key] = hit
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
        context: _Json | None = None,
    ) -> list[list[Decision]]:
        """Decisions under the bundle's policies, then under each of ``also``, over the
        same entities (``context``: a forward's, with its recipient and consent)."""
        found = self._decide_classes(facts, action, agencies, now, *also, context=context)
        return [_each(classes, agencies) for classes in found]

    def _decide_classes(
        self,
        facts: BulletinFacts,
        action: Action,
        agencies: Sequence[str],
        now: int,
        *also: PolicySet,
        context: _Json | None = None,
    ) -> list[tuple[DecidedAlike, ...]]:
        """``_decide``'s decisions in classes (``receive_classes``), per policy set."""
        directory = self._directory._agencies
        unique, known = self._listed(agencies)
        policy_sets = (self._bundle._policies, *also)
        try:
            classes, batches = self._by_class(facts, action, known, now, policy_sets, context)
        except _Refused as exc:
            if not unique:
                return [() for _ in policy_sets]
            refused = self._decision(unique[0], action, False, errors=[str(exc)])
            return [(DecidedAlike(refused, unique),) for _ in policy_sets]
        unknown = () if len(known) == len(unique) else tuple(
            DecidedAlike(self._decision(a, action, False, errors=["unknown agency"]), (a,))
            for a in unique
            if a not in directory
        )  # fmt: skip
        return [
            (*(DecidedAlike(self._settle(c[0][0], action, r), *c)
               for c, r in zip(classes, batch, strict=True)), *unknown)
            for batch in batches
        ]  # fmt: skip

    def _listed(self, agencies: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``agencies`` without duplicates, and those of them in the directory: kept per
        list (a topic's followers come again with every bulletin on it)."""
        key = tuple(agencies)
        found = self._lists.get(key)
        if found is None:
            unique = tuple(dict.fromkeys(key))
            found = unique, tuple(filter(self._directory._agencies.__contains__, unique))
            if len(self._lists) >= _KEPT_LISTS:
                self._lists.clear()
            self._lists[key] = found
        return found

    def _by_class(
        self,
        facts: BulletinFacts,
        action: Action,
        known: tuple[str, ...],
        now: int,
        policy_sets: Sequence[PolicySet],
        context: _Json | None,
    ) -> tuple[list[Cut], list[list[_Result]]]:
        """The known candidates (no duplicates) in classes (``Shapes.cut_classes``), and
        the decision of the first of each: Cedar's result, or a clean decision made for an
        earlier bulletin of the same outline in the same second (ADR 0042). A class whose
        result carried an error (its text may name the agency) or no clean decision is
        asked again, one candidate each: only a clean Allow or Deny is shared."""
        classes: list[Cut] | None = None
        shapes = self._shapes
        outline: Outline | None = None
        if shapes is not None and context is None:
            try:
                bulletin = bulletin_entity(facts)
            except (AttributeError, IndexError, TypeError, ValueError):
                pass  # refused whole by _evaluate
            else:
                if len(known) > 1:
                    roots = [*self._pinned, *references(bulletin["attrs"])]
                    fixed = self._directory._index.reach(roots)
                    classes = shapes.cut_classes(known, fixed, self._base)
                if len(policy_sets) == 1 and _cacheable(facts, now):
                    outline = shapes.outline(bulletin, self._base)
        if classes is None:
            classes = [((a,), None, ()) for a in known]
        firsts = [c[0][0] for c in classes]
        # Decisions an earlier bulletin of this outline made in this second, by role.
        keys: list[_ShareKey | None] = [None] * len(classes)
        if outline is not None and shapes is not None:
            for i, first in enumerate(firsts):
                role = shapes.role(first, outline[1], self._base)
                if role is not None:
                    keys[i] = (outline[0], action, now, role)
        shared = [None if k is None else self._shared.get(k) for k in keys]
        asked = [a for a, d in zip(firsts, shared, strict=True) if d is None]
        self.shared_taken += len(firsts) - len(asked)
        found = self._evaluate(facts, action, asked, now, policy_sets, context) if asked else [
            [] for _ in policy_sets]  # fmt: skip
        batches: list[list[_Result]] = [list(b) for b in found]
        if len(asked) < len(firsts):
            answers = iter(found[0])  # shared only under the bundle's policies alone
            batches = [[d if d is not None else next(answers) for d in shared]]
        if len(known) == len(classes) and outline is None:
            return classes, batches
        unclean = {
            i for batch in batches for i, (a, r) in enumerate(zip(firsts, batch, strict=True))
            if not isinstance(r, Decision) and (r.diagnostics.errors or r.correlation_id != a
                                                or r.decision == cedarpy.Decision.NoDecision)
        }  # fmt: skip
        for i, (first, key) in enumerate(zip(firsts, keys, strict=True)):
            result = batches[0][i]
            if key is not None and i not in unclean and not isinstance(result, Decision):
                decision = batches[0][i] = self._convert(first, action, result)
                if len(self._shared) >= _SHARED:
                    self._shared.clear()
                self._shared[key] = decision
        unclean = {i for i in unclean if len(classes[i][0]) > 1}
        if unclean:
            again = [a for i in sorted(unclean) for a in classes[i][0][1:]]
            more = self._evaluate(facts, action, again, now, policy_sets, context)
            batches = [[*b, *m] for b, m in zip(batches, more, strict=True)]
            classes = [(c[0][:1], None, ()) if i in unclean else c for i, c in enumerate(classes)]
            classes += [((a,), None, ()) for a in again]
        return classes, batches

    def _evaluate(
        self,
        facts: BulletinFacts,
        action: Action,
        known: list[str],
        now: int,
        policy_sets: Sequence[PolicySet],
        context: _Json | None = None,
    ) -> list[list[cedarpy.AuthzResult]]:
        # 1. `now` must be a plain int (bool is an int in Python, not in Cedar).
        if type(now) is not int:
            raise _Refused("now must be an int (epoch seconds)")
        # 2. The bulletin joins the entities its requests can reach, checked against the
        #    schema (in a slice, the directory's entities are checked again too).
        extra = [] if context is None else [_referenced_agency(context)]
        try:
            entities = self._entities_for(bulletin_entity(facts), [*known, *extra])
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise _Refused(f"bulletin facts rejected: {shorten_error(str(exc))}") from exc
        # 3. Known agencies go to Cedar in one batch (unknown ones are denied by the caller).
        resource = entity_uid("Bulletin", facts.bulletin_id)
        requests: list[_Json] = [
            {"principal": entity_uid("Agency", a), "action": entity_uid("Action", action),
             "resource": resource, "context": context or {"now": now}, "correlation_id": a}
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
        roots += [(AGENCY, a) for a in principals]
        uids = index.reach(roots)
        schema = self._bundle._schema
        if len(uids) > self._slice_limit:
            return self._directory.entities().with_added_json_str(f"[{text}]", schema)
        # The directory's part of a slice recurs (an originator's bulletins, a topic's
        # classes): parsed once and kept, then copied with the bulletin added, as the
        # whole directory is (ADR 12: both decide alike).
        key = frozenset(uids)
        part = self._slices.get(key)
        if part is None:
            part = Entities.from_json_str(index.text(uids), schema)
            if len(self._slices) >= _KEPT_SLICES:
                self._slices.clear()
            self._slices[key] = part
        return part.with_added_json_str(f"[{text}]", schema)

    def _settle(self, agency: str, action: Action, result: _Result) -> Decision:
        """``agency``'s decision from Cedar's result, or from a decision shared with it."""
        if not isinstance(result, Decision):
            return self._convert(agency, action, result)
        if result.agency == agency:
            return result
        return replace(result, agency=agency)

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
