"""State nodes (ADR 0030), the pure parts: names, the link's permissions, stream configs,
and the rendered configs of a hub and a state node (which nats-server accepts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.bus.leaves import (
    fed_agencies,
    hub_sources,
    leaf_domain,
    leaf_gated_subject,
    leaf_stream,
    leaf_stream_configs,
    link_account,
    link_permissions,
    link_wiring,
    state_account,
    state_stream_config,
)
from broker.bus.natsconf import AgencyUser, LeafHub, LeafLink, LeafRemote, NatsLayout
from broker.bus.server import NatsServer, find_nats_server
from broker.runtime.statenodes import parse_leaves
from clients.agency_flags import leaf_url_of
from schemas.errors import ConfigError
from schemas.natskeys import new_user_seed, user_public_key
from schemas.subjects import DELIVER_STREAM, INGEST_STREAM, RECEIPT_STREAM

GT = ("gt-police", "gt-military")
SECRET = "s3cret-link-password-0123456789"


@pytest.mark.parametrize(
    ("text", "states"),
    [("GT", ["GT"]), ("gt, bz", ["BZ", "GT"]), ("CRI", ["CRI"])],
)
def test_parse_leaves(text: str, states: list[str]) -> None:
    assert parse_leaves(text) == states


@pytest.mark.parametrize("text", ["", "G", "GT,GT", "G1", "GTMX", "gt.>", "GT BZ"])
def test_parse_leaves_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_leaves(text)


def test_names() -> None:
    assert leaf_domain("GT") == "gt"
    assert leaf_stream("GT", "ingest") == "ISTMO_LEAF_INGEST_GT"
    assert leaf_stream("BZ", "receipt") == "ISTMO_LEAF_RECEIPTS_BZ"
    with pytest.raises(ValueError, match="gated kind"):
        leaf_stream("GT", "deliver")
    assert leaf_gated_subject("ingest", "gt-police") == "istmo.leaf.ingest.gt-police"
    with pytest.raises(ValueError, match="gated kind"):
        leaf_gated_subject("deliver", "gt-police")
    with pytest.raises(ValueError, match="state code"):
        leaf_domain("gt.>")


@pytest.mark.parametrize(
    "subject",
    [
        "istmo.gated.ingest.gt-police",  # straight into the hub's ingest, past the gate
        "istmo.ingest.gt-police",  # the hub's gate
        "istmo.deliver.gt-police.routine",
        "istmo.audit.bulletin",
        "istmo.api.bz-police.status",  # another state's agency
        "istmo.leaf.ingest.gt-police",
        "$JS.API.STREAM.INFO.ISTMO_DELIVER",  # the hub's API, unqualified
        "$JS.hub.API.STREAM.DELETE.ISTMO_STATE_GT",
        "$JS.hub.API.STREAM.PURGE.ISTMO_INGEST",
        "$JS.hub.API.CONSUMER.CREATE.ISTMO_STATE_BZ",  # another state's stream
        "$JS.hub.API.CONSUMER.CREATE.ISTMO_DELIVER.x.istmo.deliver.bz-police",
        "$JS.hub.API.STREAM.MSG.GET.ISTMO_STATE_GT",
        "$KV.istmo-leaders.sequencer",
        "$JS.S.abc123",  # the hub's own sourcing (ISTMO_DELIVER into the state streams)
        "istmo.link.bz.up.S.abc123",  # another state's feed into the hub
        "$JS.FC.ISTMO_STATE_BZ.JS_SRC_x.1",
        "$JSC.R.abc123",
    ],
)
def test_the_link_cannot_publish_into_the_hub(subject: str) -> None:
    publish, _ = link_permissions("GT", GT)
    assert not any(_matches(allowed, subject) for allowed in publish), subject


@pytest.mark.parametrize(
    "subject",
    [
        "istmo.deliver.bz-police.routine",
        "istmo.gated.ingest.bz-police",
        "istmo.audit.bulletin",
        "istmo.control.directory",
        "$JS.bz.API.STREAM.INFO.ISTMO_LEAF_INGEST_BZ",
        "$JS.FC.ISTMO_LEAF_INGEST_BZ.JS_SRC_x.1",  # the hub's answers to BZ's node
        "$JS.FC.ISTMO_LEAF_RECEIPTS_BZ.JS_SRC_x.1",
        "$JS.API.STREAM.INFO.ISTMO_DELIVER",
        "$JS.S.abc123",  # sourcing of any other stream
        "istmo.link.bz.down.S.abc123",  # BZ's copies
        "$JS.FC.ISTMO_STATE_BZ.JS_SRC_x.1",
    ],
)
def test_the_link_is_sent_nothing_else(subject: str) -> None:
    _, subscribe = link_permissions("GT", GT)
    assert not any(_matches(allowed, subject) for allowed in subscribe), subject


def test_the_link_carries_its_own_agencies_requests() -> None:
    publish, subscribe = link_permissions("GT", GT)
    assert any(_matches(a, "istmo.api.gt-police.status") for a in publish)
    assert any(_matches(a, "$JS.hub.API.CONSUMER.CREATE.ISTMO_STATE_GT") for a in publish)
    assert any(_matches(a, "$JS.gt.API.CONSUMER.CREATE.ISTMO_LEAF_INGEST_GT") for a in subscribe)
    assert any(_matches(a, "$JS.FC.ISTMO_LEAF_INGEST_GT.JS_SRC_x.1") for a in subscribe)
    assert any(_matches(a, "istmo.announce") for a in subscribe)


def test_a_link_account_is_wired_to_its_own_state_only() -> None:
    """What ISTMO and LEAF_GT give each other names GT's stream, node, agencies and
    sourcing prefixes, and nothing of BZ's (the account is the first fence)."""
    gt = link_wiring("GT", GT)
    assert gt.account == link_account("GT") == "LEAF_GT"
    assert gt.state_account == state_account("GT") == "STATE_GT"
    subjects = [
        *gt.services_to_link,
        *gt.state_services_to_link,
        *(a for pair in gt.api_aliases for a in pair),
        *gt.streams_to_link,
        *gt.state_streams_to_link,
        *gt.services_to_istmo,
        *gt.streams_to_istmo,
        *gt.state_api,
        *(a for pair in gt.istmo_services_to_state for a in pair),
        *gt.istmo_streams_to_state,
    ]
    assert not [s for s in subjects if "bz" in s.lower()]
    assert gt.state_streams_to_link == ("istmo.link.gt.down.>",)
    # ISTMO gives the link its agencies' services and the announcements, nothing of
    # JetStream's: the state's stream and its sourcing live in the state's account.
    assert gt.streams_to_link == ("istmo.announce",)
    assert not [s for s in gt.services_to_link if not s.startswith("istmo.api.gt-")]
    assert gt.state_api == ("$JS.API.>", "$JS.STATE_GT.API.>")
    # What the state account takes from ISTMO: its source's calls on ISTMO_DELIVER (never
    # a consumer's deletion, which reads no body) and that source's deliveries.
    taken = [istmo for istmo, _ in gt.istmo_services_to_state]
    assert all(s.startswith(("$JS.API.", "$JS.FC.")) and "ISTMO_DELIVER" in s for s in taken)
    assert not [s for s in taken if ".DELETE." in s or s.startswith("$JS.API.STREAM.D")]
    assert gt.istmo_streams_to_state == ("istmo.state.gt.>",)
    assert gt.streams_to_istmo == ("istmo.link.gt.up.>",)
    assert "$JS.gt.API.>" in gt.services_to_istmo
    # The flow control ISTMO imports from each state's account is that state's alone.
    bz = link_wiring("BZ", ("bz-police",))
    assert not set(gt.services_to_istmo) & set(bz.services_to_istmo)
    assert "$JS.FC.ISTMO_LEAF_INGEST_GT.>" in gt.services_to_istmo
    assert "istmo.api.gt-police.>" in gt.services_to_link
    assert not [s for s in subjects if s.startswith(("$JS.S.", "$JSC.", "_R_", "istmo.deliver"))]
    # The link's permissions name the same subjects as its account's imports and exports.
    publish, subscribe = link_permissions("GT", GT)
    for subject in (*gt.streams_to_link, *gt.state_streams_to_link):
        assert any(_matches(a, subject.replace(">", "x")) for a in subscribe), subject
    for subject in gt.streams_to_istmo:
        assert any(_matches(a, subject.replace(">", "x")) for a in publish), subject


def _matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def test_streams() -> None:
    state = state_stream_config("GT", GT, max_age_s=3600, duplicate_window_s=600)
    assert state.name == "ISTMO_STATE_GT"
    assert state.subjects == []
    (source,) = state.sources or []
    assert source.name == DELIVER_STREAM
    assert source.external is not None  # across accounts, from ISTMO
    assert (source.external.api, source.external.deliver) == ("$JS.istmo.API", "istmo.state.gt")
    filters = {t.src for t in source.subject_transforms or []}
    assert filters == {
        "istmo.deliver.gt-police",
        "istmo.deliver.gt-police.*",
        "istmo.deliver.gt-military",
        "istmo.deliver.gt-military.*",
    }
    sources = hub_sources(["GT", "BZ"])
    assert set(sources) == {INGEST_STREAM, RECEIPT_STREAM}
    assert [(s.external.api, s.external.deliver) for s in sources[INGEST_STREAM] if s.external] == [
        ("$JS.bz.API", "istmo.link.bz.up"),
        ("$JS.gt.API", "istmo.link.gt.up"),
    ]
    leaf = {c.name: c for c in leaf_stream_configs("GT", max_age_s=3600, duplicate_window_s=600)}
    assert leaf[DELIVER_STREAM].subjects == []  # only what the hub sends
    (down,) = leaf[DELIVER_STREAM].sources or []
    assert down.external is not None
    assert (down.external.api, down.external.deliver) == ("$JS.hub.API", "istmo.link.gt.down")
    assert set(leaf) == {"ISTMO_LEAF_INGEST_GT", "ISTMO_LEAF_RECEIPTS_GT", DELIVER_STREAM}
    assert leaf["ISTMO_LEAF_INGEST_GT"].deny_purge
    assert leaf["ISTMO_LEAF_INGEST_GT"].deny_delete
    assert [s.name for s in sources[RECEIPT_STREAM]] == [
        "ISTMO_LEAF_RECEIPTS_BZ",
        "ISTMO_LEAF_RECEIPTS_GT",
    ]


def test_nats_server_accepts_a_hub_and_a_state_node(tmp_path: Path) -> None:
    binary = find_nats_server()
    relay = user_public_key(new_user_seed())
    users = tuple(AgencyUser(a, user_public_key(new_user_seed())) for a in GT)
    hub = NatsLayout(
        port=14222,
        http_port=18222,
        store_dir=tmp_path / "hub",
        relay_nkey_public=relay,
        agencies=(*users, AgencyUser("bz-police", user_public_key(new_user_seed()))),
        domain="hub",
        leaf_hub=LeafHub(
            17422, (LeafLink("GT", SECRET, GT), LeafLink("BZ", SECRET + "b", ("bz-police",)))
        ),
    )
    leaf = NatsLayout(
        port=14223,
        http_port=18223,
        store_dir=tmp_path / "gt",
        relay_nkey_public=relay,
        agencies=users,
        domain="gt",
        server_name="istmo-leaf-gt",
        leaf_remote=LeafRemote("127.0.0.1", 17422, "GT", SECRET),
    )
    for name, layout in (("hub", hub), ("gt", leaf)):
        NatsServer(
            binary, tmp_path / f"{name}.conf", layout, tmp_path / f"{name}.log"
        ).write_config()
    text = (tmp_path / "hub.conf").read_text()
    assert 'user: "leaf-gt"' in text
    # Each link in an account of its own, which ISTMO feeds only its own state's stream.
    gt_account = text[text.index("  LEAF_GT {") : text.index("  STATE_GT {")]
    assert 'user: "leaf-gt"' in gt_account
    # GT's stream in GT's state account, which feeds GT's link account only.
    state_gt = text[text.index("  STATE_GT {") :]
    assert "jetstream: enabled" in state_gt[: state_gt.index("  }")]
    assert 'stream: "istmo.link.gt.down.>", accounts: [LEAF_GT]' in state_gt
    assert 'stream: "istmo.link.bz.down.>", accounts: [LEAF_BZ]' in text
    assert 'stream: "istmo.state.gt.>", accounts: [STATE_GT]' in text
    assert "users" not in state_gt[: state_gt.index("  }")]
    assert "istmo.api.bz-police.>" not in gt_account
    assert "leaf-gt" not in text[text.index("  ISTMO {") : text.index("  LEAF_GT {")]
    assert 'domain: "hub"' in text
    assert "nats-leaf://leaf-gt:" in (tmp_path / "gt.conf").read_text()


@pytest.mark.parametrize(
    "change",
    [
        {"domain": None},
        {"domain": "GT"},
        {"leaf_remote": LeafRemote("127.0.0.1", 17422, "BZ", SECRET)},  # not its domain
        {"leaf_remote": LeafRemote("127.0.0.1", 17422, "GT", "short")},
        {"leaf_remote": LeafRemote("hub example", 17422, "GT", SECRET)},
    ],
)
def test_a_bad_state_node_layout_is_refused(tmp_path: Path, change: dict[str, object]) -> None:
    from broker.bus.natsconf import render_config

    base = {
        "port": 1,
        "http_port": 2,
        "store_dir": tmp_path,
        "relay_nkey_public": user_public_key(new_user_seed()),
        "agencies": (),
        "domain": "gt",
        "leaf_remote": LeafRemote("127.0.0.1", 17422, "GT", SECRET),
    }
    with pytest.raises(ValueError):  # noqa: PT011 (each case its own message)
        render_config(NatsLayout(**{**base, **change}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("info", "agency", "url"),
    [
        (
            {"leaves": {"GT": {"nats_url": "nats://n:1", "agencies": ["gt-police"]}}},
            "gt-police",
            "nats://n:1",
        ),
        (
            {"leaves": {"GT": {"nats_url": "nats://n:1", "agencies": ["gt-police"]}}},
            "rc-drugs",
            None,
        ),
        ({"nats_url": "nats://hub:1"}, "gt-police", None),
        ({"leaves": {"GT": {"nats_url": 7, "agencies": ["gt-police"]}}}, "gt-police", None),
        ({"leaves": ["GT"]}, "gt-police", None),
        ([], "gt-police", None),
    ],
)
def test_the_cli_connects_an_agency_to_its_state_node(
    info: object, agency: str, url: str | None
) -> None:
    assert leaf_url_of(info, agency) == url


def test_the_relay_reads_a_state_streams_agencies_from_its_filters() -> None:
    """Whose deliveries reach a state node (ADR 30, amendment): exactly the agencies its
    ``ISTMO_STATE_<S>`` filters, none for a state with no agency yet."""
    state = state_stream_config("GT", GT, max_age_s=3600, duplicate_window_s=600)
    assert fed_agencies(state) == frozenset(GT)
    empty = state_stream_config("BZ", (), max_age_s=3600, duplicate_window_s=600)
    assert fed_agencies(empty) == frozenset()
