"""The cluster's config and port checks, without starting a server (pure, fast)."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from broker.bus.cluster import ClusterPorts, check_cluster_ports
from broker.bus.natsconf import (
    AgencyUser,
    ClusterLayout,
    NatsLayout,
    render_accounts,
    render_config,
)
from schemas.errors import ConfigError
from schemas.natskeys import new_user_seed, user_public_key
from tests.cluster.conftest import free_port_run

RELAY = user_public_key(new_user_seed())
GT = AgencyUser("gt-police", user_public_key(new_user_seed()))
SECRET = "route-password-0123456789"


def layout(**cluster: object) -> NatsLayout:
    base = ClusterLayout(port=6001, peers=(6002, 6003), route_password=SECRET)
    return NatsLayout(
        port=4001,
        http_port=8001,
        store_dir=Path("/srv/js"),
        relay_nkey_public=RELAY,
        agencies=(GT,),
        server_name="istmo-1",
        cluster=dataclasses.replace(base, **cluster),  # type: ignore[arg-type]
    )


def test_a_node_names_its_peers_and_authenticates_routes() -> None:
    text = render_config(layout())
    assert 'listen: "127.0.0.1:6001"' in text
    assert f'"nats-route://istmo-route:{SECRET}@127.0.0.1:6002"' in text
    assert f'"nats-route://istmo-route:{SECRET}@127.0.0.1:6003"' in text
    assert f'password: "{SECRET}"' in text
    assert "sync_interval: always" in text
    # The accounts are the same block a region's nodes include.
    assert text.endswith(render_accounts(layout()))


def test_a_single_node_has_no_cluster_block() -> None:
    single = dataclasses.replace(layout(), cluster=None)
    assert "cluster {" not in render_config(single)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"peers": ()}, "at least one peer"),
        ({"peers": (6002, 6002)}, "repeat"),
        ({"port": 4001}, "repeat"),
        ({"peers": (70000,)}, "not a TCP port"),
        ({"route_password": "short"}, "route password"),
        ({"route_password": "has space in it 0123"}, "route password"),
        ({"route_password": 'quote"in-it-0123456789'}, "route password"),
        ({"name": "bad name"}, "cluster name"),
    ],
)
def test_bad_cluster_settings_are_refused(change: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        render_config(layout(**change))


def test_a_taken_port_is_named_with_its_node_and_option() -> None:
    base = free_port_run(9)  # nine free ports; the second then taken here
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        port = base + 1
        # Node 2's route port is taken (not node 1's: a run found free, not a neighbour).
        ports = ClusterPorts(client=base + 3, http=base + 6, cluster=base)
        with pytest.raises(ConfigError, match=rf"port {port} .*routes of node istmo-2") as err:
            check_cluster_ports(ports, 3)
        assert err.value.hint == "pick another with --cluster-port (node 2 uses it + 1)"
