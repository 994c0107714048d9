"""A NATS leaf node per state (ADR 0030): names, the link's permissions, and the streams.

A state node is a nats-server of its own, in a JetStream domain of its own
(``leaf_domain``), joined to the hub as a leaf node: bound to its own account ISTMO on its
side, and on the hub's side to an account of the state's own (``link_account``:
``LEAF_GT``), which sees only what ISTMO exports to it. The state's agencies connect to it
with the same accounts and permissions as on the hub (``broker.bus.natsconf``); nothing
about an agency changes but the URL.

What crosses the link is JetStream sourcing, which keeps its place on both sides while the
link is down and carries on from there when it returns:

* upwards, a gate on the state node (``broker.bus.gate`` with ``leaf_gated_subject``)
  stores the agencies' publishes and receipts in ``ISTMO_LEAF_INGEST_<S>`` and
  ``ISTMO_LEAF_RECEIPTS_<S>`` there (``leaf_stream``: named after the state, so that the
  flow control of one state's streams is a subject of its own); the hub's ``ISTMO_INGEST``
  and ``ISTMO_RECEIPTS`` source them from every state's domain, renamed to the gated
  subjects the relay reads;
* downwards, the hub's ``ISTMO_STATE_<S>``, in an account of the state's own
  (``state_account``: ``STATE_GT``, JetStream and no user), sources from ISTMO's
  ``ISTMO_DELIVER`` across accounts the deliveries of the state's agencies (and nothing
  else), and the state node's own ``ISTMO_DELIVER`` sources that stream, where the
  agencies' two durable consumers read as on the hub.

Routing (verify, decide, audit) stays on the hub: during a cut the state node takes and
acknowledges publishes, hands out what had arrived, and holds the rest.

A state's two hub accounts are wired (``LinkWiring``) with only what that needs. The state
account exports to the link account the JetStream API of its ``ISTMO_STATE_<S>``
(consumer create, info, delete; the stream's info; flow-control replies) and that stream's
deliveries on ``istmo.link.<s>.down.>`` (the deliver prefix of the node's source); ISTMO
exports to the link account its own agencies' ``istmo.api`` services and the
announcements, and to the state account the API of ``ISTMO_DELIVER`` its source calls
(not a consumer's deletion) and that source's deliveries on ``istmo.state.<s>.>``. The
link account exports to ISTMO its node's JetStream API (``$JS.<s>.API.>``), the hub's
source deliveries on ``istmo.link.<s>.up.>`` and the flow control of the node's own two
streams; the state account exports to ISTMO its JetStream API (``state_api_prefix``), for
the broker to manage the stream. Nothing another state's link sends or is sent crosses
into them: sourcing's deliveries, API replies and the service replies ``_R_`` of one state
exist only in that state's accounts. And since the link's consumers live in its state's
account, whatever they deliver is published there: onto nothing of ISTMO's but the
requests its own source makes, which a delivered copy does not make. The link user's
permissions (``link_permissions``) narrow it again to the same subjects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import (
    DiscardPolicy,
    ExternalStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from broker.bus.streams import add_or_update_stream
from schemas.subjects import (
    ANNOUNCE_SUBJECT,
    DELIVER_STREAM,
    GATED_KINDS,
    INGEST_STREAM,
    RECEIPT_STREAM,
    api_subject,
    legacy_deliver_subject,
)

__all__ = [
    "HUB_DOMAIN",
    "LinkWiring",
    "check_state",
    "ensure_hub_sources",
    "ensure_hub_state_streams",
    "ensure_leaf_streams",
    "fed_agencies",
    "hub_sources",
    "leaf_domain",
    "leaf_gated_subject",
    "leaf_stream",
    "leaf_stream_configs",
    "leaf_user",
    "link_account",
    "link_deliver_prefix",
    "link_permissions",
    "link_wiring",
    "node_agencies",
    "state_account",
    "state_api_prefix",
    "state_stream",
    "state_stream_config",
    "waiting_on_state_node",
]

HUB_DOMAIN = "hub"
_LEAF_STREAMS = {"ingest": "ISTMO_LEAF_INGEST", "receipt": "ISTMO_LEAF_RECEIPTS"}
_LEAF = "istmo.leaf"
_API_TIMEOUT_S = 2.0
_STATE_API_TIMEOUT_S = 10.0
_STATE = re.compile(r"^[A-Z]{2,3}$")  # ISO 3166 alpha-2 (or -3), as in the directory


def check_state(state: str) -> str:
    """``state`` if it is a state code such as ``GT`` (ValueError otherwise)."""
    if _STATE.fullmatch(state) is None:
        raise ValueError(f"not a state code: {state[:16]!r} (two or three capital letters)")
    return state


def leaf_domain(state: str) -> str:
    """The JetStream domain of a state's node: its code in lower case (``gt``)."""
    return check_state(state).lower()


def leaf_user(state: str) -> str:
    """The hub's user for one state's leaf link (``leaf-gt``)."""
    return f"leaf-{leaf_domain(state)}"


def link_account(state: str) -> str:
    """The hub's account of one state's leaf link (``LEAF_GT``; agency accounts are
    ``AG_...``, so the names never meet)."""
    return f"LEAF_{check_state(state)}"


def link_deliver_prefix(state: str, way: str) -> str:
    """Where sourcing across ``state``'s link delivers: ``istmo.link.gt.down`` (the hub's
    ``ISTMO_STATE_GT`` to the node) or ``istmo.link.gt.up`` (the node's streams to the
    hub's ingest and receipts). Each is exported between ISTMO and that state's account
    only."""
    if way not in ("down", "up"):
        raise ValueError(f"not a way across a link: {way!r}")
    return f"istmo.link.{leaf_domain(state)}.{way}"


def state_stream(state: str) -> str:
    """The hub's stream of one state's deliveries (``ISTMO_STATE_GT``), in the state's
    account (``state_account``)."""
    return f"ISTMO_STATE_{check_state(state)}"


def state_account(state: str) -> str:
    """The hub's account holding one state's ``ISTMO_STATE_<S>`` (``STATE_GT``): JetStream
    and no users. Whatever a consumer on that stream delivers is published there, never
    in ISTMO."""
    return f"STATE_{check_state(state)}"


def state_api_prefix(state: str) -> str:
    """Where account ISTMO calls the JetStream API of ``state``'s account
    (``$JS.STATE_GT.API``: ``nc.jetstream(prefix=...)`` on a connection in ISTMO)."""
    return f"$JS.{state_account(state)}.API"


def _state_deliver_prefix(state: str) -> str:
    # Where the hub's source of ISTMO_DELIVER into ISTMO_STATE_<S> delivers, in ISTMO:
    # exported to that state's account only.
    return f"istmo.state.{leaf_domain(state)}"


def leaf_stream(state: str, kind: str) -> str:
    """A state node's stream of what its gate stored of ``kind``: ``ISTMO_LEAF_INGEST_GT``
    or ``ISTMO_LEAF_RECEIPTS_GT``.

    Named after the state because the hub answers the flow control of its source on
    ``$JS.FC.<stream>.<consumer>...`` in account ISTMO, and ISTMO imports that answer from
    the state's link account by that subject: with one name on every node, GT's answers
    would be imported from every state's account (ADR 0030).
    """
    if kind not in _LEAF_STREAMS:
        raise ValueError(f"not a gated kind: {kind!r}")
    return f"{_LEAF_STREAMS[kind]}_{check_state(state)}"


def leaf_gated_subject(kind: str, agency: str) -> str:
    """Where a state node's gate stores what ``agency`` published on
    ``istmo.<kind>.<agency>``: ``istmo.leaf.<kind>.<agency>``, which nothing on the hub
    listens to (the hub sources it, renamed to ``istmo.gated.<kind>.<agency>``)."""
    if kind not in GATED_KINDS:
        raise ValueError(f"not a gated kind: {kind!r}")
    return f"{_LEAF}.{kind}.{legacy_deliver_subject(agency).rsplit('.', 1)[1]}"


def _agency_deliver_subjects(agency: str) -> tuple[str, ...]:
    own = legacy_deliver_subject(agency)
    return (own, own + ".*")


def _agency_api_prefixes(agencies: Sequence[str]) -> list[str]:
    return [api_subject(a, "recipients").rsplit(".", 1)[0] + ".>" for a in agencies]


def _state_stream_api(state: str, api: str) -> list[str]:
    """The JetStream API of ``ISTMO_STATE_<S>`` a node's source uses, under ``api``."""
    stream = state_stream(state)
    return [
        f"{api}.CONSUMER.CREATE.{stream}",  # an unnamed, unfiltered source consumer
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.>",
        f"{api}.CONSUMER.DELETE.{stream}.>",
        f"{api}.STREAM.INFO.{stream}",
    ]


# ISTMO's JetStream API as a state's account names it (what its stream's source calls).
_ISTMO_API = "$JS.istmo.API"


def _deliver_stream_api(api: str) -> list[str]:
    """The JetStream API of ISTMO's ``ISTMO_DELIVER`` a state stream's source uses, under
    ``api``. Not ``CONSUMER.DELETE``, which reads no body: a consumer on the state's
    stream delivering onto it could delete an agency's consumer. (A source's ephemeral
    consumer that is not deleted goes when nobody listens to it any more.)"""
    return [
        f"{api}.CONSUMER.CREATE.{DELIVER_STREAM}",
        f"{api}.CONSUMER.CREATE.{DELIVER_STREAM}.>",
        f"{api}.CONSUMER.INFO.{DELIVER_STREAM}.>",
        f"{api}.STREAM.INFO.{DELIVER_STREAM}",
    ]


def _flow_control(stream: str) -> str:
    # Flow-control replies of a consumer on ``stream`` ($JS.FC.<stream>.<consumer>.<id>).
    return f"$JS.FC.{stream}.>"


def link_permissions(state: str, agencies: Sequence[str]) -> tuple[list[str], list[str]]:
    """(publish, subscribe) allow-lists of the hub's user for ``state``'s leaf link.

    Publish is what the state node may send into its account on the hub; subscribe is
    what the hub may send it. Nothing else crosses: not the gated, delivery or audit
    subjects, not the hub's unqualified JetStream API, not another state's stream, not
    another agency's ``istmo.api`` subjects, not another state's sourcing. (The account,
    ``link_wiring``, bounds it first: these lists are the second fence. The service
    replies ``_R_`` both ways are those of requests into that account only.)
    """
    hub_api = f"$JS.{HUB_DOMAIN}.API"
    publish = [
        *_state_stream_api(state, hub_api),
        _flow_control(state_stream(state)),  # the node answers the hub's consumer
        link_deliver_prefix(state, "up") + ".>",  # the node's consumers feed the hub
        # The node's answers to the hub's requests (its JetStream API), which reach it
        # through ISTMO's import with a reply in this account: nats-server tells the node
        # of that interest only if the link may publish there.
        "_R_.>",
        "$LDS.>",  # nats-server's loop detection
        *_agency_api_prefixes(agencies),
    ]
    subscribe = [
        f"$JS.{leaf_domain(state)}.API.>",
        link_deliver_prefix(state, "down") + ".>",
        "$JSC.R.>",  # the hub's JetStream answers to the node's source
        # The hub answers the flow control of the node's consumers (its own streams only).
        _flow_control(leaf_stream(state, "ingest")),
        _flow_control(leaf_stream(state, "receipt")),
        "$LDS.>",
        "_R_.>",  # the hub's answers to the agencies' istmo.api requests
        ANNOUNCE_SUBJECT,
    ]
    return publish, subscribe


@dataclass(frozen=True)
class LinkWiring:
    """What one state's two hub accounts and account ISTMO give each other.

    The link account (``account``, ``LEAF_GT``) holds the link's user; the state account
    (``state_account``, ``STATE_GT``) holds JetStream with the state's ``ISTMO_STATE_<S>``
    and no user.

    * Into the link account: ``services_to_link`` and ``streams_to_link`` from ISTMO (its
      agencies' ``istmo.api`` services, the announcements); ``state_services_to_link``
      and ``state_streams_to_link`` from the state account (its stream's JetStream API
      and flow control, its deliveries), plus ``api_aliases``: that JetStream API imported
      again under the hub's domain prefix (``$JS.hub.API...``, what the node sends;
      nats-server also maps that prefix to ``$JS.API`` in a leaf's account, and either
      way one matches).
    * Into ISTMO: ``services_to_istmo`` and ``streams_to_istmo`` from the link account
      (the node's JetStream API, its feed, the flow control of its streams);
      ``state_api``: the state account's JetStream API, under ``state_api_prefix``.
    * Into the state account, from ISTMO: ``istmo_services_to_state`` (ISTMO's subject,
      the state account's name for it: the API of ``ISTMO_DELIVER`` its source uses, and
      that source's flow control) and ``istmo_streams_to_state`` (the source's
      deliveries).
    """

    account: str
    services_to_link: tuple[str, ...]
    streams_to_link: tuple[str, ...]
    state_account: str
    state_services_to_link: tuple[str, ...]
    api_aliases: tuple[tuple[str, str], ...]  # (the state account's subject, the link's)
    state_streams_to_link: tuple[str, ...]
    services_to_istmo: tuple[str, ...]
    streams_to_istmo: tuple[str, ...]
    state_api: tuple[str, str]  # (the state account's subject, ISTMO's name for it)
    istmo_services_to_state: tuple[tuple[str, str], ...]
    istmo_streams_to_state: tuple[str, ...]


def link_wiring(state: str, agencies: Sequence[str]) -> LinkWiring:
    """The exports and imports between ISTMO and ``state``'s link and state accounts
    (``agencies``: the state's agencies, whose ``istmo.api`` requests the link carries)."""
    local = _state_stream_api(state, "$JS.API")
    domain = _state_stream_api(state, f"$JS.{HUB_DOMAIN}.API")
    deliver_api = zip(_deliver_stream_api("$JS.API"), _deliver_stream_api(_ISTMO_API), strict=True)
    fc = _flow_control(DELIVER_STREAM)
    return LinkWiring(
        account=link_account(state),
        services_to_link=tuple(_agency_api_prefixes(agencies)),
        streams_to_link=(ANNOUNCE_SUBJECT,),
        state_account=state_account(state),
        state_services_to_link=(*local, _flow_control(state_stream(state))),
        api_aliases=tuple(zip(local, domain, strict=True)),
        state_streams_to_link=(link_deliver_prefix(state, "down") + ".>",),
        state_api=("$JS.API.>", state_api_prefix(state) + ".>"),
        istmo_services_to_state=(*deliver_api, (fc, fc)),
        istmo_streams_to_state=(_state_deliver_prefix(state) + ".>",),
        services_to_istmo=(
            f"$JS.{leaf_domain(state)}.API.>",
            _flow_control(leaf_stream(state, "ingest")),
            _flow_control(leaf_stream(state, "receipt")),
        ),
        streams_to_istmo=(link_deliver_prefix(state, "up") + ".>",),
    )


def state_stream_config(
    state: str, agencies: Sequence[str], *, max_age_s: int, duplicate_window_s: int
) -> StreamConfig:
    """The hub's ``ISTMO_STATE_<S>``, in the state's account: the deliveries of
    ``state``'s agencies, sourced from ISTMO's ``ISTMO_DELIVER`` across accounts (one
    subject filter per agency; nothing of any other agency)."""
    # A transform to itself is a filter (a wildcard must be named in the destination).
    transforms = [
        SubjectTransform(src=subject, dest=subject.replace("*", "{{wildcard(1)}}"))
        for agency in sorted(agencies)
        for subject in _agency_deliver_subjects(agency)
    ]
    return StreamConfig(
        name=state_stream(state),
        subjects=[],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=float(max_age_s),
        duplicate_window=float(min(duplicate_window_s, max_age_s)),
        deny_delete=True,
        deny_purge=True,
        allow_msg_ttl=True,
        allow_direct=False,
        sources=[
            StreamSource(
                name=DELIVER_STREAM,
                external=ExternalStream(api=_ISTMO_API, deliver=_state_deliver_prefix(state)),
                subject_transforms=transforms,
            )
        ]
        if transforms
        else None,
    )


def fed_agencies(config: StreamConfig) -> frozenset[str]:
    """The agencies whose deliveries an ``ISTMO_STATE_<S>`` stream sources (its filters'
    ``istmo.deliver.<agency>``): those whose copies its state node holds."""
    out: set[str] = set()
    for source in config.sources or []:
        for transform in source.subject_transforms or []:
            parts = (transform.src or "").split(".")
            if len(parts) == 3 and parts[:2] == ["istmo", "deliver"] and "*" not in parts[2]:
                out.add(parts[2])
    return frozenset(out)


async def node_agencies(js: JetStreamContext) -> frozenset[str]:
    """Every agency whose deliveries a state node receives (``js`` on the hub's account
    ISTMO; none without nodes): the states are those whose node the hub's ingest sources
    (``hub_sources``), and each state's ``ISTMO_STATE_<S>``, in the state's account, names
    its agencies.

    A group copy (ADR 21) is not sourced to a state node, so the relay stores such an
    agency a copy of its own as well (``broker.relay.fanout``, ADR 30's amendment).
    """
    ingest = await js.stream_info(INGEST_STREAM)
    prefix = _LEAF_STREAMS["ingest"] + "_"  # leaf_stream(S, "ingest"): ISTMO_LEAF_INGEST_<S>
    states = sorted(
        s.name.removeprefix(prefix)
        for s in ingest.config.sources or []
        if s.name and s.name.startswith(prefix) and _STATE.match(s.name.removeprefix(prefix))
    )
    out: set[str] = set()
    for state in states:
        # The same connection, with the prefix under which ISTMO calls the state's
        # account's JetStream API.
        in_state = js._nc.jetstream(prefix=state_api_prefix(state), timeout=_STATE_API_TIMEOUT_S)
        try:
            info = await in_state.stream_info(state_stream(state))
        except NotFoundError:
            continue  # not made yet: its node holds nothing
        out |= fed_agencies(info.config)
    return frozenset(out)


def hub_sources(states: Sequence[str]) -> dict[str, list[StreamSource]]:
    """The sources the hub's ``ISTMO_INGEST`` and ``ISTMO_RECEIPTS`` take from every
    state node, renaming ``istmo.leaf.<kind>.<agency>`` to ``istmo.gated.<kind>.<agency>``."""
    out: dict[str, list[StreamSource]] = {INGEST_STREAM: [], RECEIPT_STREAM: []}
    for state in sorted(states):
        api = f"$JS.{leaf_domain(state)}.API"
        for kind, stream in (("ingest", INGEST_STREAM), ("receipt", RECEIPT_STREAM)):
            out[stream].append(
                StreamSource(
                    name=leaf_stream(state, kind),
                    external=ExternalStream(api=api, deliver=link_deliver_prefix(state, "up")),
                    subject_transforms=[
                        SubjectTransform(
                            src=f"{_LEAF}.{kind}.*", dest=f"istmo.gated.{kind}.{{{{wildcard(1)}}}}"
                        )
                    ],
                )
            )
    return out


def leaf_stream_configs(
    state: str, *, max_age_s: int, duplicate_window_s: int
) -> list[StreamConfig]:
    """A state node's streams: what its gate stores (kept ``max_age_s``, the hub sources
    it) and its ``ISTMO_DELIVER``, sourced from the hub's ``ISTMO_STATE_<S>``."""
    window = float(min(duplicate_window_s, max_age_s))
    outgoing = [
        StreamConfig(
            name=leaf_stream(state, kind),
            subjects=[f"{_LEAF}.{kind}.*"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=float(max_age_s),
            # A full node refuses the publisher rather than dropping what it accepted.
            discard=DiscardPolicy.NEW,
            duplicate_window=window,
            deny_delete=True,
            deny_purge=True,
            allow_direct=False,
        )
        for kind in _LEAF_STREAMS
    ]
    deliver = StreamConfig(
        name=DELIVER_STREAM,
        subjects=[],  # only what the hub sends: nothing published here is stored
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=float(max_age_s),
        duplicate_window=window,
        deny_delete=False,
        deny_purge=True,
        allow_msg_ttl=True,
        allow_direct=False,
        sources=[
            StreamSource(
                name=state_stream(state),
                external=ExternalStream(
                    api=f"$JS.{HUB_DOMAIN}.API", deliver=link_deliver_prefix(state, "down")
                ),
            )
        ],
    )
    return [*outgoing, deliver]


async def ensure_hub_state_streams(
    nc: NATS,
    states: Mapping[str, Sequence[str]],
    *,
    max_age_s: int,
    duplicate_window_s: int,
) -> None:
    """Create or update the hub's ``ISTMO_STATE_<S>`` of every state in ``states``
    (state code to its agencies), each in its state's account (``nc``: in ISTMO)."""
    for state, agencies in sorted(states.items()):
        await add_or_update_stream(
            nc.jetstream(prefix=state_api_prefix(state), timeout=_STATE_API_TIMEOUT_S),
            state_stream_config(
                state, agencies, max_age_s=max_age_s, duplicate_window_s=duplicate_window_s
            ),
        )


async def ensure_hub_sources(js: JetStreamContext, states: Sequence[str]) -> None:
    """Make the hub's ``ISTMO_INGEST`` and ``ISTMO_RECEIPTS`` source from each state node
    of ``states`` (once the nodes' streams exist: a source that finds no stream is retried
    only after a back-off). A source already there keeps its place in the node's stream
    (nats-server keys it by name and API prefix), so nothing is sourced twice; one with
    another deliver prefix (a hub from before the link accounts) is given the state's."""
    for stream, wanted in hub_sources(states).items():
        config = (await js.stream_info(stream)).config
        have = list(config.sources or [])
        by_key = {(s.name, s.external.api if s.external else None): s for s in wanted}
        changed = False
        kept: list[StreamSource] = []
        for source in have:
            key = (source.name, source.external.api if source.external else None)
            want = by_key.pop(key, None)
            if want is not None and want.external is not None and source.external is not None:
                if source.external.deliver != want.external.deliver:
                    source.external.deliver = want.external.deliver
                    changed = True
            kept.append(source)
        if by_key or changed:
            config.sources = [*kept, *by_key.values()]
            await add_or_update_stream(js, config)


async def ensure_leaf_streams(
    js: JetStreamContext, state: str, *, max_age_s: int, duplicate_window_s: int
) -> None:
    """Create or update a state node's streams (``js`` on its account ISTMO)."""
    for config in leaf_stream_configs(
        state, max_age_s=max_age_s, duplicate_window_s=duplicate_window_s
    ):
        await add_or_update_stream(js, config)


async def waiting_on_state_node(nc: NATS, state: str, agency: str) -> bool:
    """Whether ``agency``'s state node holds a publish of it that the hub has not sourced
    yet (the last of its on the node is past the hub's place in that node's stream).

    ``nc`` is a connection in the hub's account ISTMO. False when the state has no node
    (nobody answers for its domain) or the agency published nothing there; True when the
    node or the hub does not answer (the link may be down: the cautious answer).
    """
    domain = leaf_domain(state)
    stream = leaf_stream(state, "ingest")
    try:
        last = await _api(
            nc,
            f"$JS.{domain}.API.STREAM.MSG.GET.{stream}",
            {"last_by_subj": leaf_gated_subject("ingest", agency)},
        )
    except nats.errors.NoRespondersError:
        return False
    except (nats.errors.Error, TimeoutError, ValueError):
        return True
    if "error" in last:
        return False  # nothing of the agency's on its node (404), or no such stream
    try:
        info = await _api(nc, f"$JS.API.STREAM.INFO.{INGEST_STREAM}", {})
    except (nats.errors.Error, TimeoutError, ValueError):
        return True
    api = f"$JS.{domain}.API"
    for source in info.get("sources") or []:
        if source.get("name") == stream and (source.get("external") or {}).get("api") == api:
            return int(last.get("message", {}).get("seq", 0)) > int(source.get("seq") or 0)
    return False


async def _api(nc: NATS, subject: str, body: dict[str, object]) -> dict[str, Any]:
    reply = await nc.request(subject, json.dumps(body).encode(), timeout=_API_TIMEOUT_S)
    answer = json.loads(reply.data)
    if not isinstance(answer, dict):
        raise ValueError("JetStream answered with something other than an object")
    return answer
