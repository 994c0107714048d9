"""A directory snapshot built from an earlier one (``DirectorySnapshot.build(previous=)``)
is the snapshot a fresh build gives: the same entity text and version, the same prefilter
index, the same slices; what it takes from the earlier one is only what an unchanged
agency's values determine, and nothing once the jurisdictions change."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from broker.policy.engine import AgencyInfo, DirectorySnapshot, JurisdictionInfo, PolicyBundle
from schemas.errors import ConfigError
from schemas.labels import TOPICS
from tests.core.test_policy_slicing import directories

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture(scope="module")
def bundle() -> PolicyBundle:
    return PolicyBundle.load(POLICIES)


def assert_same(built: DirectorySnapshot, fresh: DirectorySnapshot) -> None:
    """Everything a decision reads of a snapshot, compared in full."""
    assert built.version == fresh.version
    assert built._whole._text == fresh._whole._text  # parse=False keeps the text
    assert built._agencies == fresh._agencies
    got, want = built._receivers, fresh._receivers
    assert (dict(got.clearance), dict(got.topics)) == (dict(want.clearance), dict(want.topics))
    assert dict(got.members) == dict(want.members)
    uids = list(fresh._index.reach(fresh._index._texts))
    assert built._index.text(uids) == fresh._index.text(uids)
    assert len(built._index) == len(fresh._index)


@st.composite
def changed(
    draw: st.DrawFn, jurisdictions: list[JurisdictionInfo], agencies: list[AgencyInfo]
) -> tuple[list[JurisdictionInfo], list[AgencyInfo]]:
    """The directory after a few changes: agencies kept, changed, removed or added; now
    and then other jurisdictions altogether."""
    if draw(st.integers(0, 5)) == 0:
        return draw(directories())
    after = []
    for a in agencies:
        how = draw(st.sampled_from(["keep", "keep", "status", "clearance", "topics", "drop"]))
        if how == "status":
            a = dataclasses.replace(a, status="suspended" if a.status == "active" else "active")
        elif how == "clearance":
            a = dataclasses.replace(a, clearance=(a.clearance + 1) % 4)
        elif how == "topics":
            a = dataclasses.replace(a, topics=draw(st.frozensets(st.sampled_from(TOPICS))))
        if how != "drop":
            after.append(a)
    _, extra = draw(directories())
    taken = {a.id for a in after}
    after += [
        dataclasses.replace(a, id=f"new-{a.id}", state=None, communities=())
        for a in extra[: draw(st.integers(0, 2))]
        if f"new-{a.id}" not in taken
    ]
    return jurisdictions, after


@settings(max_examples=80, deadline=None, database=None)
@given(data=st.data())
def test_built_from_an_earlier_snapshot_it_is_a_fresh_build(
    bundle: PolicyBundle, data: st.DataObject
) -> None:
    jurisdictions, agencies = data.draw(directories(), label="before")
    earlier = DirectorySnapshot.build(jurisdictions, agencies, bundle, parse=False)
    j2, a2 = data.draw(changed(jurisdictions, agencies), label="after")
    event("same jurisdictions" if j2 == jurisdictions else "other jurisdictions")
    built = DirectorySnapshot.build(j2, a2, bundle, parse=False, previous=earlier)
    assert_same(built, DirectorySnapshot.build(j2, a2, bundle, parse=False))
    # And from that one again (what a third rebuild reuses is the second's).
    again = DirectorySnapshot.build(j2, a2, bundle, parse=False, previous=built)
    assert_same(again, built)


def _agency(aid: str, **changes: object) -> AgencyInfo:
    a = AgencyInfo(aid, aid, "police", "active", 2, frozenset({"migration"}), "GT", ())
    return dataclasses.replace(a, **changes)  # type: ignore[arg-type]


GT = (
    JurisdictionInfo("SICA", "community", "SICA", ()),
    JurisdictionInfo("GT", "state", "Guatemala", ("SICA",)),
)


def test_only_what_an_unchanged_agency_determines_is_taken(bundle: PolicyBundle) -> None:
    one, two, three = _agency("gt-a"), _agency("gt-b"), _agency("gt-c")
    earlier = DirectorySnapshot.build(GT, [one, two, three], bundle)
    suspended = dataclasses.replace(two, status="suspended")
    built = DirectorySnapshot.build(GT, [one, suspended], bundle, previous=earlier)
    before, after = earlier._parts, built._parts
    assert before is not None
    assert after is not None
    assert after.agencies[one] is before.agencies[one]  # taken
    assert after.agencies[suspended] is not before.agencies[two]  # worked out again
    assert set(after.agencies) == {one, suspended}  # gt-c is let go
    assert built._agencies == {"gt-a": one, "gt-b": suspended}
    assert set(built._receivers.clearance) == {"gt-a", "gt-b"}
    # Other jurisdictions: nothing is taken, not even an agency whose values are the same.
    renamed = (GT[0], dataclasses.replace(GT[1], name="República de Guatemala"))
    other = DirectorySnapshot.build(renamed, [one, suspended], bundle, previous=built)
    assert other._parts is not None
    assert other._parts.agencies[one] is not after.agencies[one]
    assert other.version != built.version


def test_a_bad_agency_is_refused_whatever_was_built_before(bundle: PolicyBundle) -> None:
    earlier = DirectorySnapshot.build(GT, [_agency("gt-a")], bundle)
    for bad in (
        _agency("gt-a", clearance=7),
        _agency("gt-a", state="XX"),
        _agency("gt-a", topics=["migration"]),  # unhashable: checked, never kept
    ):
        with pytest.raises(ConfigError, match="directory rejected"):
            DirectorySnapshot.build(GT, [bad], bundle, previous=earlier)
    with pytest.raises(ConfigError, match="duplicate agency id"):
        DirectorySnapshot.build(GT, [_agency("gt-a"), _agency("gt-a")], bundle, previous=earlier)
