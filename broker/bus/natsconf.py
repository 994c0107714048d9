"""Render the nats-server configuration of one Istmo node (pure: text in, text out).

Shape, per ``reference/NATS-PERMISSIONS.md`` §1 and §3.2:

* account ``ISTMO`` holds JetStream and the relay's user, and exports to each agency only
  the services that agency needs: its own ingest and receipt subjects, ``MSG.NEXT`` and
  ``$JS.ACK`` of each of its own two delivery consumers (ADR 7), and
  ``istmo.api.<agency>.>``;
* every agency has an account of its own (``schemas.subjects.account_name``) with one nkey
  user whose allow-lists are exactly those subjects (publish) and its inbox prefix
  (subscribe), and which imports those services. Because JetStream answers through the
  service import's response mapping, a reply subject chosen by the agency can only ever
  land in the agency's own account (the reply-subject hole, S-26);
* ``ISTMO`` also exports one stream, the relays' announcements (``ANNOUNCE_SUBJECT``),
  which every agency account imports unchanged and its user may subscribe to, and only
  that: a stream import carries messages one way, into the agency (ADR 0009).

Both kinds of account deny everything by default, so a user entry without permissions gets
nothing.

In operator mode (``NatsLayout.operator``, ADR 0013) there is no ``accounts`` block at all:
the node trusts the broker's operator JWT, keeps the account JWTs the broker pushes in a
``full`` resolver directory, and is given the system account's and ISTMO's JWTs to start
with (``resolver_preload``); the JWTs are ``broker.bus.natsauth``'s.

A hub with state nodes (``NatsLayout.leaf_hub``, ADR 0030) listens for leaf nodes and has
two accounts per state: ``LEAF_GT`` holding that state's link user, and ``STATE_GT`` with
JetStream and no user, holding the state's ``ISTMO_STATE_GT``; both wired to ISTMO and to
each other by exports and imports of only what that state's link needs
(``broker.bus.leaves.link_wiring``), the link user allowed only those subjects
(``link_permissions``): no state's link sees another's sourcing or replies, and nothing
its consumers deliver is published in ISTMO. A state node (``NatsLayout.leaf_remote``)
renders only its own state's agencies and joins the hub as a leaf bound to its own account
ISTMO. Both run JetStream in a domain of their own (``NatsLayout.domain``).

A node of a cluster (``NatsLayout.cluster``) adds a ``cluster`` block: its route port, the
other nodes' routes, and a route user and password, so that no other local process can join
the cluster as a route (a route bypasses every account permission). Every node renders the
same accounts. Writing the file, validating it and signalling the server is left to
``broker.bus.server`` and ``broker.bus.cluster``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from broker.bus.grants import (
    agency_publish_subjects,
    agency_services,
    agency_subscribe_subjects,
)
from broker.bus.leaves import LinkWiring, leaf_domain, leaf_user, link_permissions, link_wiring
from schemas.subjects import ANNOUNCE_SUBJECT, RELAY_ACCOUNT, account_name

__all__ = [
    "ANY_PORT",
    "AgencyUser",
    "ClusterLayout",
    "LeafHub",
    "LeafLink",
    "LeafRemote",
    "NatsLayout",
    "OperatorMode",
    "agency_publish_subjects",
    "render_accounts",
    "render_config",
]

ANY_PORT = 0  # in a NatsLayout: nats-server picks a free port itself
# A public user nkey: "U" and 55 more base32 characters.
_USER_NKEY = re.compile(r"^U[A-Z2-7]{55}$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_ROUTE_SECRET = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_ACCOUNT_NKEY = re.compile(r"^A[A-Z2-7]{55}$")
_JWT = re.compile(r"^eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_DENY_ALL = '{ publish: { deny: [">"] }, subscribe: { deny: [">"] } }'


@dataclass(frozen=True)
class AgencyUser:
    """One agency's NATS identity: its id and the public half of its user nkey."""

    agency: str
    nkey_public: str  # "U..."


@dataclass(frozen=True)
class ClusterLayout:
    """How one node joins its cluster: its route port and the other nodes' route ports."""

    port: int  # this node's route (cluster) port
    peers: tuple[int, ...]  # the route ports of the other nodes, on the same host
    route_password: str  # shared by every node; the config file is mode 0600
    name: str = "istmo"
    route_user: str = "istmo-route"


@dataclass(frozen=True)
class LeafLink:
    """One state's link, as the hub sees it: its user's password and the state's agencies
    (whose ``istmo.api`` requests it may carry)."""

    state: str
    password: str  # the config file is mode 0600
    agencies: tuple[str, ...]


@dataclass(frozen=True)
class LeafHub:
    """The hub's side of the state nodes: where it listens for them, and their links."""

    port: int
    links: tuple[LeafLink, ...]


@dataclass(frozen=True)
class LeafRemote:
    """A state node's side: the hub's leaf-node address and this state's link password."""

    host: str
    port: int
    state: str
    password: str


@dataclass(frozen=True)
class OperatorMode:
    """How a node trusts the broker as its NATS operator (ADR 0013) instead of a list of
    accounts: every account is a JWT the broker signed, pushed while the node runs."""

    operator_jwt: str
    system_account: str  # the system account's public key ("A...")
    preload: tuple[tuple[str, str], ...]  # (account public key, its JWT): SYS and ISTMO
    resolver_dir: Path  # where the node keeps the account JWTs pushed to it
    # How often a node's resolver compares its store (nats-server's default: a minute). The
    # broker does not count on it to bring a node that missed a push up to date: it sends
    # the push again (broker.runtime.accounts, ADR 0013).
    sync_interval_s: int = 10


@dataclass(frozen=True)
class NatsLayout:
    """Everything the config of one node depends on.

    ``port`` or ``http_port`` 0 (``ANY_PORT``) lets nats-server pick a free port when it
    starts (rendered ``-1``); ``broker.bus.server`` reads back the one it bound.
    """

    port: int
    http_port: int
    store_dir: Path
    relay_nkey_public: str
    agencies: tuple[AgencyUser, ...]
    host: str = "127.0.0.1"
    server_name: str = "istmo-1"
    max_payload: int = 2 * 1024 * 1024
    cluster: ClusterLayout | None = None
    operator: OperatorMode | None = None
    domain: str | None = None  # JetStream domain (ADR 0030): "hub", or a state's
    leaf_hub: LeafHub | None = None
    leaf_remote: LeafRemote | None = None


def _q(value: str) -> str:
    """A double-quoted config string; quoting also keeps '$' from meaning a variable."""
    return json.dumps(value)


def _q_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_q(value) for value in values) + "]"


def _check(layout: NatsLayout) -> None:
    for what, port in (("port", layout.port), ("http_port", layout.http_port)):
        if not 0 <= port < 65536:
            raise ValueError(f"{what} {port} is not a TCP port")
    if layout.port == layout.http_port != ANY_PORT:
        raise ValueError(f"port and http_port are both {layout.port}")
    if layout.max_payload <= 0:
        raise ValueError(f"max_payload {layout.max_payload} must be positive")
    if _SERVER_NAME.fullmatch(layout.server_name) is None:
        raise ValueError(f"invalid server_name {layout.server_name!r}")
    keys = [layout.relay_nkey_public, *(user.nkey_public for user in layout.agencies)]
    for key in keys:
        if _USER_NKEY.fullmatch(key) is None:
            raise ValueError(f"not a public user nkey: {key[:8]!r}...")
    if len(set(keys)) != len(keys):
        raise ValueError("the relay and every agency need a user nkey of their own")
    agencies = [user.agency for user in layout.agencies]
    if len(set(agencies)) != len(agencies):
        raise ValueError("an agency is listed twice")
    if layout.cluster is not None:
        _check_cluster(layout, layout.cluster)
    if layout.operator is not None:
        _check_operator(layout, layout.operator)
    _check_leaves(layout)


_DOMAIN = re.compile(r"^[a-z]{2,8}$")


def _check_leaves(layout: NatsLayout) -> None:
    if layout.domain is not None and _DOMAIN.fullmatch(layout.domain) is None:
        raise ValueError(f"invalid JetStream domain {layout.domain!r}")
    if (layout.leaf_hub or layout.leaf_remote) and layout.domain is None:
        raise ValueError("a hub or state node needs a JetStream domain")
    if (layout.leaf_hub or layout.leaf_remote) and layout.operator is not None:
        raise ValueError("state nodes run in config mode only")
    if layout.leaf_hub is not None:
        if not 0 < layout.leaf_hub.port < 65536:
            raise ValueError(f"leaf node port {layout.leaf_hub.port} is not a TCP port")
        states = [link.state for link in layout.leaf_hub.links]
        if len(set(states)) != len(states):
            raise ValueError("a state has two links")
        for link in layout.leaf_hub.links:
            leaf_domain(link.state)  # raises on a bad state code
            if _ROUTE_SECRET.fullmatch(link.password) is None:
                raise ValueError("a link password must be 16-128 characters of [A-Za-z0-9_-]")
    remote = layout.leaf_remote
    if remote is not None:
        if layout.domain != leaf_domain(remote.state):
            raise ValueError(
                f"state node {remote.state} must run in domain {leaf_domain(remote.state)}"
            )
        if not 0 < remote.port < 65536:
            raise ValueError(f"hub port {remote.port} is not a TCP port")
        if _ROUTE_SECRET.fullmatch(remote.password) is None:
            raise ValueError("a link password must be 16-128 characters of [A-Za-z0-9_-]")
        if re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", remote.host) is None:
            raise ValueError(f"invalid hub host {remote.host[:40]!r}")


def _leaf_block(layout: NatsLayout) -> list[str]:
    if layout.leaf_hub is not None:
        # No authorization block: a leaf authenticates as a user of the accounts below,
        # and that user's permissions bound what crosses the link.
        return [
            "leafnodes {",
            f"  host: {_q(layout.host)}",
            f"  port: {layout.leaf_hub.port}",
            # State nodes dial the address they were given, never one the hub gossips
            # (a proxy, a firewall's or a load balancer's address stays in the path).
            "  no_advertise: true",
            "}",
            "",
        ]
    remote = layout.leaf_remote
    if remote is None:
        return []
    user = leaf_user(remote.state)
    url = f"nats-leaf://{user}:{remote.password}@{remote.host}:{remote.port}"
    return [
        "leafnodes {",
        "  remotes: [",
        f"    {{ url: {_q(url)}, account: {RELAY_ACCOUNT} }}",
        "  ]",
        "}",
        "",
    ]


def _wirings(layout: NatsLayout) -> list[tuple[LeafLink, LinkWiring]]:
    links = layout.leaf_hub.links if layout.leaf_hub else ()
    return [(link, link_wiring(link.state, link.agencies)) for link in links]


def _state_account(wiring: LinkWiring) -> list[str]:
    """One state's JetStream account on the hub: its ``ISTMO_STATE_<S>``, no user. What
    its stream's consumers deliver is published here, where nothing of ISTMO's is
    imported but the API of ``ISTMO_DELIVER`` its source uses and that source's flow
    control (a copy delivered there is not a request JetStream takes)."""
    istmo = RELAY_ACCOUNT
    return [
        f"  {wiring.state_account} {{",
        "    jetstream: enabled",
        f"    default_permissions: {_DENY_ALL}",
        "    exports: [",
        *(
            f"      {{ service: {_q(x)}, accounts: [{wiring.account}] }}"
            for x in wiring.state_services_to_link
        ),
        f"      {{ service: {_q(wiring.state_api[0])}, accounts: [{istmo}] }}",
        *(
            f"      {{ stream: {_q(x)}, accounts: [{wiring.account}] }}"
            for x in wiring.state_streams_to_link
        ),
        "    ]",
        "    imports: [",
        *(
            f"      {{ service: {{ account: {istmo}, subject: {_q(x)} }}, to: {_q(alias)} }}"
            for x, alias in wiring.istmo_services_to_state
        ),
        *(
            f"      {{ stream: {{ account: {istmo}, subject: {_q(x)} }} }}"
            for x in wiring.istmo_streams_to_state
        ),
        "    ]",
        "  }",
    ]


def _link_account(link: LeafLink, wiring: LinkWiring) -> list[str]:
    """One state's link account on the hub: its link user, what it gives ISTMO and takes
    from ISTMO and from its state account."""
    publish, subscribe = link_permissions(link.state, link.agencies)
    istmo = RELAY_ACCOUNT
    state = wiring.state_account
    lines = [
        f"  {wiring.account} {{",
        # No JetStream here: the link reaches ISTMO's streams only through the imports.
        f"    default_permissions: {_DENY_ALL}",
        "    users: [",
        f"      {{ user: {_q(leaf_user(link.state))}, password: {_q(link.password)}",
        "        permissions: {",
        f"          publish: {{ allow: {_q_list(publish)} }}",
        f"          subscribe: {{ allow: {_q_list(subscribe)} }}",
        "        } }",
        "    ]",
        "    exports: [",
        *(f"      {{ service: {_q(x)}, accounts: [{istmo}] }}" for x in wiring.services_to_istmo),
        *(f"      {{ stream: {_q(x)}, accounts: [{istmo}] }}" for x in wiring.streams_to_istmo),
        "    ]",
        "    imports: [",
        *(
            f"      {{ service: {{ account: {istmo}, subject: {_q(x)} }} }}"
            for x in wiring.services_to_link
        ),
        *(
            f"      {{ stream: {{ account: {istmo}, subject: {_q(x)} }} }}"
            for x in wiring.streams_to_link
        ),
        *(
            f"      {{ service: {{ account: {state}, subject: {_q(x)} }} }}"
            for x in wiring.state_services_to_link
        ),
        *(
            f"      {{ service: {{ account: {state}, subject: {_q(x)} }}, to: {_q(alias)} }}"
            for x, alias in wiring.api_aliases
        ),
        *(
            f"      {{ stream: {{ account: {state}, subject: {_q(x)} }} }}"
            for x in wiring.state_streams_to_link
        ),
        "    ]",
        "  }",
    ]
    return lines


def _check_operator(layout: NatsLayout, operator: OperatorMode) -> None:
    if layout.agencies:
        raise ValueError("in operator mode agencies are account JWTs, not users in the config")
    if _JWT.fullmatch(operator.operator_jwt) is None:
        raise ValueError("the operator JWT is not a JWT")
    keys = [operator.system_account, *(key for key, _ in operator.preload)]
    for key in keys:
        if _ACCOUNT_NKEY.fullmatch(key) is None:
            raise ValueError(f"not a public account nkey: {key[:8]!r}...")
    for _, token in operator.preload:
        if _JWT.fullmatch(token) is None:
            raise ValueError("a preloaded account JWT is not a JWT")
    if operator.system_account not in keys[1:]:
        raise ValueError("the system account's JWT must be preloaded")
    if operator.sync_interval_s <= 0:
        raise ValueError("the resolver's sync interval must be positive")


def _operator_block(operator: OperatorMode) -> list[str]:
    lines = [
        f"operator: {_q(operator.operator_jwt)}",
        f"system_account: {_q(operator.system_account)}",
        "resolver {",
        "  type: full",
        f"  dir: {_q(str(operator.resolver_dir))}",
        # Accounts are never deleted: a revoked agency's account stays, admitting nobody.
        "  allow_delete: false",
        f"  interval: {_q(f'{operator.sync_interval_s}s')}",
        "}",
        "resolver_preload {",
    ]
    lines += [f"  {key}: {_q(token)}" for key, token in operator.preload]
    lines += ["}", ""]
    return lines


def _check_cluster(layout: NatsLayout, cluster: ClusterLayout) -> None:
    ports = (cluster.port, *cluster.peers)
    for port in ports:
        if not 0 < port < 65536:
            raise ValueError(f"cluster port {port} is not a TCP port")
    if len(set(ports)) != len(ports) or {layout.port, layout.http_port} & set(ports):
        raise ValueError(f"cluster ports {ports} repeat, or repeat a client or monitoring port")
    if not cluster.peers:
        raise ValueError("a cluster node needs at least one peer")
    for what, name in (("cluster name", cluster.name), ("route user", cluster.route_user)):
        if _SERVER_NAME.fullmatch(name) is None:
            raise ValueError(f"invalid {what} {name!r}")
    if _ROUTE_SECRET.fullmatch(cluster.route_password) is None:
        raise ValueError("the route password must be 16-128 characters of [A-Za-z0-9_-]")


def _cluster_block(layout: NatsLayout, cluster: ClusterLayout) -> list[str]:
    auth = f"{cluster.route_user}:{cluster.route_password}"
    routes = [f"nats-route://{auth}@{layout.host}:{port}" for port in cluster.peers]
    return [
        "cluster {",
        f"  name: {_q(cluster.name)}",
        f"  listen: {_q(f'{layout.host}:{cluster.port}')}",
        # Without it any local process could connect as a route and see every account.
        "  authorization {",
        f"    user: {_q(cluster.route_user)}",
        f"    password: {_q(cluster.route_password)}",
        "    timeout: 2",
        "  }",
        f"  routes: {_q_list(routes)}",
        "}",
        "",
    ]


def _relay_account(layout: NatsLayout) -> list[str]:
    wirings = _wirings(layout)
    # Each service ISTMO exports, with every account that may import it (one entry per
    # subject: the agency's own account, and its state's link account for istmo.api).
    services: dict[str, tuple[list[str], bool, str]] = {}
    for user in layout.agencies:
        for service in agency_services(user.agency):
            services[service.subject] = ([account_name(user.agency)], service.streamed, user.agency)
    for _, wiring in wirings:
        for subject in wiring.services_to_link:
            accounts, streamed, note = services.setdefault(subject, ([], False, wiring.account))
            accounts.append(wiring.account)
    for _, wiring in wirings:
        for subject, _alias in wiring.istmo_services_to_state:
            accounts, _, _ = services.setdefault(subject, ([], False, "the state accounts"))
            accounts.append(wiring.state_account)
    lines = [
        f"  {RELAY_ACCOUNT} {{",
        "    jetstream: enabled",
        # A user entry that forgets its permissions gets nothing (§6.2).
        f"    default_permissions: {_DENY_ALL}",
        "    users: [",
        f"      {{ nkey: {_q(layout.relay_nkey_public)}",
        '        permissions: { publish: { allow: [">"] }, subscribe: { allow: [">"] } } }',
        "    ]",
        "    exports: [",
    ]
    last = ""
    for subject, (accounts, streamed, note) in services.items():
        if note != last:
            lines.append(f"      # {note}")
            last = note
        rtype = ", response_type: stream" if streamed else ""
        lines.append(
            f"      {{ service: {_q(subject)}, accounts: [{', '.join(accounts)}]{rtype} }}"
        )
    # The announcements go to every agency and every link; a link's own deliveries to it.
    # (An empty accounts list would export to every account: never rendered.)
    listeners = [account_name(u.agency) for u in layout.agencies]
    listeners += [w.account for _, w in wirings]
    if listeners:
        lines.append(
            f"      {{ stream: {_q(ANNOUNCE_SUBJECT)}, accounts: [{', '.join(listeners)}] }}"
        )
    for _, wiring in wirings:
        for subject in wiring.streams_to_link:
            if subject != ANNOUNCE_SUBJECT:
                lines.append(f"      {{ stream: {_q(subject)}, accounts: [{wiring.account}] }}")
        for subject in wiring.istmo_streams_to_state:
            lines.append(f"      {{ stream: {_q(subject)}, accounts: [{wiring.state_account}] }}")
    lines += ["    ]"]
    if wirings:
        lines.append("    imports: [")
        for _, wiring in wirings:
            lines += [
                f"      {{ service: {{ account: {wiring.account}, subject: {_q(x)} }} }}"
                for x in wiring.services_to_istmo
            ]
            lines += [
                f"      {{ stream: {{ account: {wiring.account}, subject: {_q(x)} }} }}"
                for x in wiring.streams_to_istmo
            ]
            api, alias = wiring.state_api
            lines.append(
                f"      {{ service: {{ account: {wiring.state_account}, subject: {_q(api)} }},"
                f" to: {_q(alias)} }}"
            )
        lines.append("    ]")
    lines += ["  }"]
    return lines


def _agency_account(user: AgencyUser) -> list[str]:
    services = agency_services(user.agency)
    lines = [
        f"  {account_name(user.agency)} {{",
        # No JetStream here: the agency reaches ISTMO's streams only through the imports.
        f"    default_permissions: {_DENY_ALL}",
        "    users: [",
        f"      {{ nkey: {_q(user.nkey_public)}",
        "        permissions: {",
        f"          publish: {{ allow: {_q_list(s.subject for s in services)} }}",
        f"          subscribe: {{ allow: {_q_list(agency_subscribe_subjects(user.agency))} }}",
        "        } }",
        "    ]",
        "    imports: [",
    ]
    for service in services:
        lines.append(
            f"      {{ service: {{ account: {RELAY_ACCOUNT}, subject: {_q(service.subject)} }} }}"
        )
    lines.append(
        f"      {{ stream: {{ account: {RELAY_ACCOUNT}, subject: {_q(ANNOUNCE_SUBJECT)} }} }}"
    )
    lines += ["    ]", "  }"]
    return lines


def _port(port: int) -> int:
    """A port as nats-server reads it: -1 asks for a random free one (0 would mean the
    default, 4222)."""
    return -1 if port == ANY_PORT else port


def render_config(layout: NatsLayout) -> str:
    """Return the nats-server config text for ``layout``.

    Args:
        layout: ports, store directory, the relay's and the agencies' public nkeys.

    Returns:
        The config file's text; every string is quoted, every subject holding ``$`` too.

    Raises:
        ValueError: a port, nkey, server name or cluster setting is malformed, or a key,
            agency or port repeats.
        EnvelopeError: an agency id is not a valid agency id.
    """
    _check(layout)
    lines = [
        "# Rendered by broker.bus.natsconf.render_config; edits are overwritten.",
        f"server_name: {_q(layout.server_name)}",
        f"host: {_q(layout.host)}",
        f"port: {_port(layout.port)}",
        f"http: {_q(f'{layout.host}:{_port(layout.http_port)}')}",
        f"max_payload: {layout.max_payload}",
        "",
        *(_cluster_block(layout, layout.cluster) if layout.cluster else []),
        *_leaf_block(layout),
        "jetstream {",
        f"  store_dir: {_q(str(layout.store_dir))}",
        *([f"  domain: {_q(layout.domain)}"] if layout.domain else []),
        # The default fsyncs every 2 min and loses acknowledged messages on power loss.
        "  sync_interval: always",
        "}",
        "",
        *(
            _operator_block(layout.operator)
            if layout.operator is not None
            else [render_accounts(layout)]
        ),
    ]
    return "\n".join(lines)


def render_accounts(layout: NatsLayout) -> str:
    """The ``accounts { ... }`` block alone: what a region's NATS nodes ``include`` from
    their own hand-written config (``deploy/nats``), identical on every node.

    Raises:
        ValueError, EnvelopeError: as ``render_config``; or the layout is in operator mode.
    """
    _check(layout)
    if layout.operator is not None:
        raise ValueError("in operator mode accounts are JWTs, not a config block")
    lines = ["accounts {", *_relay_account(layout)]
    for user in layout.agencies:
        lines += _agency_account(user)
    for link, wiring in _wirings(layout):
        lines += _link_account(link, wiring)
        lines += _state_account(wiring)
    lines += ["}", ""]
    return "\n".join(lines)
