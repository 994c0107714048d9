"""Istmo's delivery rules in plain Python: the oracle the Cedar policies are tested against.

Written from the rules in prose (issue 3), not from ``policies/*.cedar``, so that a slip in
either shows up as a disagreement. Each rule carries the ``@id`` the policies must use.

Publish (the principal publishes a bulletin):
  grant  grant.publish-own        it is the bulletin's originator
  guard  guard.agency-suspended   it is not active (suspended or revoked)
  guard  guard.publish-clearance  its clearance is below the classification it marks
  guard  guard.publish-expired    the bulletin has already expired at ``now``

Receive (the principal receives the bulletin):
  grant  grant.originator         it is the originator
  grant  grant.releasable         its state, or a community it belongs to (at any depth of
                                  the membership graph), is in ``rel_to``
  grant  grant.named-recipient    the originator named it
  grant  grant.public             TLP:CLEAR, UNCLASSIFIED, and it follows the topic
  guard  guard.agency-suspended   not active (also for the originator)
  The originator is exempt from every guard below.
  guard  guard.clearance          clearance below the classification (named or not)
  guard  guard.embargo            ``now`` is before ``not_before``
  guard  guard.expired            ``now`` is at or after ``expires_at``
  guard  guard.tlp-red            TLP:RED and not named
  guard  guard.tlp-amber-strict   TLP:AMBER+STRICT, not named, and not an agency of the
                                  originating state (an agency with no state never is)
  guard  guard.subscription       does not follow the topic and is not named
  guard  guard.h1-judicial-use    H1, justice sector, not in ``judicial_consent`` (naming
                                  is not consent)
  guard  guard.source-grade       it has a minimum grade and the bulletin is ungraded or
                                  worse on either axis (A best .. F; 1 best .. 6)
  guard  guard.auditor-no-content an auditor, not named
  guard  sica.secret-national-only    originating state in SICA, SECRET, a regional
                                      centre, not named
  guard  caricom.military-no-migration originating state in CARICOM, topic migration, a
                                      military agency, not named

Any guard denies, naming every guard that holds; otherwise any grant allows, naming every
grant that holds; otherwise deny, naming nothing. An unknown agency is denied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from broker.policy.engine import AgencyInfo, BulletinFacts, JurisdictionInfo

_LEVEL = {"UNCLASSIFIED": 0, "RESTRICTED": 1, "CONFIDENTIAL": 2, "SECRET": 3}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    policy_ids: tuple[str, ...]  # deciding rules, sorted
    grants: tuple[str, ...]  # grants that hold, guards or not, sorted


def _grade(grade: str) -> tuple[int, int]:
    return "ABCDEF".index(grade[0]) + 1, int(grade[1])


class Oracle:
    def __init__(
        self, jurisdictions: Iterable[JurisdictionInfo], agencies: Iterable[AgencyInfo]
    ) -> None:
        self.parents = {j.code: set(j.parents) for j in jurisdictions}
        self.agencies = {a.id: a for a in agencies}

    def _above(self, codes: Iterable[str]) -> set[str]:
        """The jurisdictions given, and every one they belong to, at any depth."""
        seen: set[str] = set()
        todo = list(codes)
        while todo:
            code = todo.pop()
            if code not in seen:
                seen.add(code)
                todo.extend(self.parents.get(code, ()))
        return seen

    def member_of(self, agency: AgencyInfo) -> set[str]:
        return self._above([agency.state] if agency.state else agency.communities)

    def decide(self, facts: BulletinFacts, agency_id: str, action: str, now: int) -> Verdict:
        agency = self.agencies.get(agency_id)
        if agency is None:
            return Verdict(False, (), ())
        labels = facts.labels
        level = _LEVEL[labels.classification.value]
        is_originator = agency_id == facts.originator
        named = agency_id in labels.named
        grants: list[str] = []
        guards: list[str] = []
        if agency.status != "active":
            guards.append("guard.agency-suspended")

        if action == "publish":
            if is_originator:
                grants.append("grant.publish-own")
            if agency.clearance < level:
                guards.append("guard.publish-clearance")
            if facts.expires_at is not None and now >= facts.expires_at:
                guards.append("guard.publish-expired")
        else:
            if is_originator:
                grants.append("grant.originator")
            if self.member_of(agency) & set(labels.rel_to):
                grants.append("grant.releasable")
            if named:
                grants.append("grant.named-recipient")
            follows = labels.topic in agency.topics
            if labels.tlp.value == "CLEAR" and level == 0 and follows:
                grants.append("grant.public")
            if not is_originator:
                guards += self._receive_guards(facts, agency, now, named, follows, level)

        if guards:
            return Verdict(False, tuple(sorted(guards)), tuple(sorted(grants)))
        return Verdict(bool(grants), tuple(sorted(grants)), tuple(sorted(grants)))

    def _receive_guards(
        self,
        facts: BulletinFacts,
        agency: AgencyInfo,
        now: int,
        named: bool,
        follows: bool,
        level: int,
    ) -> list[str]:
        labels = facts.labels
        tlp = labels.tlp.value
        origin = self._above([facts.origin_state]) if facts.origin_state else set()
        guards = []
        if agency.clearance < level:
            guards.append("guard.clearance")
        if facts.not_before is not None and now < facts.not_before:
            guards.append("guard.embargo")
        if facts.expires_at is not None and now >= facts.expires_at:
            guards.append("guard.expired")
        if tlp == "RED" and not named:
            guards.append("guard.tlp-red")
        same_state = agency.state is not None and agency.state == facts.origin_state
        if tlp == "AMBER+STRICT" and not named and not same_state:
            guards.append("guard.tlp-amber-strict")
        if not follows and not named:
            guards.append("guard.subscription")
        h1 = any(h.value == "H1" for h in labels.handling)
        if h1 and agency.sector == "justice" and agency.id not in labels.judicial_consent:
            guards.append("guard.h1-judicial-use")
        if agency.min_source_grade is not None:
            floor = _grade(agency.min_source_grade)
            grade = _grade(labels.source_grade) if labels.source_grade else None
            if grade is None or grade[0] > floor[0] or grade[1] > floor[1]:
                guards.append("guard.source-grade")
        if agency.sector == "auditor" and not named:
            guards.append("guard.auditor-no-content")
        if "SICA" in origin and level == 3 and agency.sector == "regional-centre" and not named:
            guards.append("sica.secret-national-only")
        migration = labels.topic == "migration"
        if "CARICOM" in origin and migration and agency.sector == "military" and not named:
            guards.append("caricom.military-no-migration")
        return guards
