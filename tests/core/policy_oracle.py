"""Istmo's delivery rules in plain Python: the oracle the Cedar policies are tested against.

Written from the rules in prose (issue 3), not from ``policies/*.cedar``, so that a slip in
either shows up as a disagreement. Each rule carries the ``@id`` the policies must use.

Publish (the principal publishes a bulletin):
  grant  grant.publish-own        it is the bulletin's originator
  guard  guard.agency-suspended   it is not active (suspended or revoked)
  guard  guard.publish-clearance  its clearance is below the classification it marks
  guard  guard.publish-expired    the bulletin has already expired at ``now``
  A reply (ADR 16) may not weaken the labels of the bulletin it answers:
  guard  guard.reply-classification  classified below it
  guard  guard.reply-tlp             a TLP earlier in CLEAR, GREEN, AMBER, AMBER+STRICT, RED
  guard  guard.reply-releasability   a rel_to outside its rel_to and their member states
  guard  guard.reply-handling        a handling code of it missing

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
  guard  guard.h0-purpose         H0 and it does not follow the topic (naming does not
                                  lift it)
  guard  guard.h1-judicial-use    H1, justice sector, not in ``judicial_consent`` (naming
                                  is not consent)
  guard  guard.source-grade       it has a minimum grade and the bulletin is ungraded or
                                  worse on either axis (A best .. F; 1 best .. 6)
  guard  guard.auditor-no-content an auditor, not named
  guard  guard.reply-audience     a reply, and not in its audience (the originator of what it
                                  answers, and that one's recipients if reply-all)
  guard  sica.secret-national-only    originating state in SICA, SECRET, a regional
                                      centre, not named
  guard  caricom.military-no-migration originating state in CARICOM, topic migration, a
                                      military agency, not named

Forward (the principal, a recipient, passes the bulletin on to ``to``; ``consent``: the
originator signed its consent to exactly this):
  grant  grant.forward-consent    ``consent``
  grant  grant.forward-community  TLP:CLEAR or GREEN, ``to`` is in a jurisdiction of
                                  ``rel_to`` and follows the topic
  guard  guard.agency-suspended   the principal is not active
  guard  guard.forward-h2         H2 without ``consent``
  guard  guard.forward-h3         H3 without ``consent``
  guard  guard.forward-h0-purpose H0 and ``to`` does not follow the topic (consent or not)
  guard  guard.forward-recipient-inactive  ``to`` is not active
  guard  guard.forward-expired    ``now`` is at or after ``expires_at``
  An unknown ``to`` is denied, naming nothing.

Any guard denies, naming every guard that holds; otherwise any grant allows, naming every
grant that holds; otherwise deny, naming nothing. An unknown agency is denied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from broker.policy.engine import AgencyInfo, BulletinFacts, JurisdictionInfo

_LEVEL = {"UNCLASSIFIED": 0, "RESTRICTED": 1, "CONFIDENTIAL": 2, "SECRET": 3}
_TLP_ORDER = ("CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED")


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

    def decide(
        self,
        facts: BulletinFacts,
        agency_id: str,
        action: str,
        now: int,
        *,
        to: str | None = None,
        consent: bool = False,
    ) -> Verdict:
        agency = self.agencies.get(agency_id)
        if agency is None:
            return Verdict(False, (), ())
        if action == "forward":
            return self._forward(facts, agency, to, now, consent)
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
            guards += self._reply_guards(facts)
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

    @staticmethod
    def _reply_guards(facts: BulletinFacts) -> list[str]:
        answered = facts.in_reply_to
        if answered is None:
            return []
        mine, theirs = facts.labels, answered.labels
        guards = []
        if _LEVEL[mine.classification.value] < _LEVEL[theirs.classification.value]:
            guards.append("guard.reply-classification")
        if _TLP_ORDER.index(mine.tlp.value) < _TLP_ORDER.index(theirs.tlp.value):
            guards.append("guard.reply-tlp")
        if not set(mine.rel_to) <= set(answered.releasable_within):
            guards.append("guard.reply-releasability")
        if not set(theirs.handling) <= set(mine.handling):
            guards.append("guard.reply-handling")
        return guards

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
        if any(h.value == "H0" for h in labels.handling) and not follows:
            guards.append("guard.h0-purpose")
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
        if facts.in_reply_to is not None and agency.id not in facts.in_reply_to.audience:
            guards.append("guard.reply-audience")
        if "SICA" in origin and level == 3 and agency.sector == "regional-centre" and not named:
            guards.append("sica.secret-national-only")
        migration = labels.topic == "migration"
        if "CARICOM" in origin and migration and agency.sector == "military" and not named:
            guards.append("caricom.military-no-migration")
        return guards

    def _forward(
        self, facts: BulletinFacts, agency: AgencyInfo, to: str | None, now: int, consent: bool
    ) -> Verdict:
        recipient = self.agencies.get(to or "")
        if recipient is None:
            return Verdict(False, (), ())
        labels = facts.labels
        codes = {h.value for h in labels.handling}
        follows = labels.topic in recipient.topics
        grants, guards = [], []
        if consent:
            grants.append("grant.forward-consent")
        releasable = self.member_of(recipient) & set(labels.rel_to)
        if labels.tlp.value in ("CLEAR", "GREEN") and releasable and follows:
            grants.append("grant.forward-community")
        if agency.status != "active":
            guards.append("guard.agency-suspended")
        if "H2" in codes and not consent:
            guards.append("guard.forward-h2")
        if "H3" in codes and not consent:
            guards.append("guard.forward-h3")
        if "H0" in codes and not follows:
            guards.append("guard.forward-h0-purpose")
        if recipient.status != "active":
            guards.append("guard.forward-recipient-inactive")
        if facts.expires_at is not None and now >= facts.expires_at:
            guards.append("guard.forward-expired")
        if guards:
            return Verdict(False, tuple(sorted(guards)), tuple(sorted(grants)))
        return Verdict(bool(grants), tuple(sorted(grants)), tuple(sorted(grants)))
