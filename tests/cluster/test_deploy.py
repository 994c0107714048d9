"""deploy/ validated as far as this machine allows.

* ``deploy/nats/nats-{1,2,3}.conf`` with certificates from ``make-test-ca.sh`` and an
  ``accounts.conf`` from ``render-accounts.py``: ``nats-server -t`` accepts each; then the
  three run for real (ports and host names moved to loopback) as one cluster over mutually
  authenticated TLS routes, a client connects over TLS with the CA, and a plain-TCP client
  is refused (S-24).
* ``deploy/k8s/*.yaml`` parse, and hold the shapes the region needs (3 NATS replicas, 2+
  relays, 2 sequencers, 2+ API, default-deny network policies); the NATS ConfigMap's
  config is accepted by ``nats-server -t`` too.
* ``deploy/systemd/*.service`` pass ``systemd-analyze verify`` (when systemd is there).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.bus.server import server_environment
from tests.cluster.conftest import DEPLOY, NODES, deploy_cluster, node_config, run


def test_every_node_config_is_accepted(region: Path, nats_binary: Path) -> None:
    for node in NODES:
        conf = node_config(region, node)
        text = conf.read_text()
        assert "sync_interval: always" in text
        assert "verify: true" in text  # routes authenticate each other
        checked = run(nats_binary, "-c", conf, "-t")
        assert checked.returncode == 0, (node, checked.stderr)


async def test_the_nodes_form_a_tls_cluster_and_refuse_plain_clients(
    region: Path, nats_binary: Path
) -> None:
    with deploy_cluster(region, nats_binary) as cluster:
        # The broker's user reaches JetStream over TLS with the CA: a meta leader exists.
        await cluster.wait_ready()

        # The routes came up over mutual TLS: every node sees the other two.
        log1 = cluster.log(1)
        assert "Route connection created" in log1, log1[-2000:]

        # S-24: a client that does not start TLS gets an error and nothing else.
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", cluster.ports["client"] + 1), 5
        )
        try:
            info = await asyncio.wait_for(reader.readline(), 5)
            assert b'"tls_required":true' in info, info
            writer.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(4096), 5)
            assert b"PONG" not in answer, answer
            assert answer == b"" or b"-ERR" in answer, answer
        finally:
            writer.close()


def _k8s() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def test_kubernetes_manifests_hold_the_region_shape(region: Path, nats_binary: Path) -> None:
    docs = _k8s()
    assert docs["StatefulSet/nats"]["spec"]["replicas"] == 3
    assert docs["Deployment/istmo-relay"]["spec"]["replicas"] >= 2
    assert docs["Deployment/istmo-sequencer"]["spec"]["replicas"] == 2
    assert docs["Deployment/istmo-api"]["spec"]["replicas"] >= 2
    deny = docs["NetworkPolicy/default-deny"]["spec"]
    assert deny["podSelector"] == {}
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    seq = docs["Deployment/istmo-sequencer"]["spec"]["template"]["spec"]["containers"][0]
    assert "--standby" in " ".join(seq["command"])
    for name in ("istmo-relay", "istmo-sequencer", "istmo-api"):
        pod = docs[f"Deployment/{name}"]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name

    # The NATS ConfigMap's config, as a pod would run it, with this machine's paths.
    text = docs["ConfigMap/nats-config"]["data"]["nats.conf"]
    text = text.replace("/etc/nats/tls/tls.crt", str(region / "ca" / "nats-1" / "server.pem"))
    text = text.replace("/etc/nats/tls/tls.key", str(region / "ca" / "nats-1" / "server-key.pem"))
    text = text.replace("/etc/nats/tls/ca.crt", str(region / "ca" / "ca.pem"))
    text = text.replace("/var/run/nats/nats.pid", str(region / "k8s.pid"))
    text = text.replace("/data/jetstream", str(region / "k8s-js"))
    conf_dir = region / "k8s"
    (conf_dir / "accounts").mkdir(parents=True, exist_ok=True)
    shutil.copy(region / "accounts.conf", conf_dir / "accounts" / "accounts.conf")
    (conf_dir / "nats.conf").write_text(text)
    checked = run(
        nats_binary, "-c", conf_dir / "nats.conf", "-t", env={"POD_NAME": "nats-0", "PATH": ""}
    )
    assert checked.returncode == 0, checked.stderr


def test_nats_nodes_run_with_the_stacks_go_settings() -> None:
    """systemd and Kubernetes give nats-server the GODEBUG ``istmo up`` gives it (ADR 40)."""
    godebug = server_environment({})["GODEBUG"]
    unit = (DEPLOY / "systemd" / "istmo-nats.service").read_text()
    assert f"Environment=GODEBUG={godebug}\n" in unit
    nats = _k8s()["StatefulSet/nats"]["spec"]["template"]["spec"]["containers"][0]
    assert nats["name"] == "nats"
    assert {e["name"]: e.get("value") for e in nats["env"]}["GODEBUG"] == godebug


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_units_verify(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    units = sorted((DEPLOY / "systemd").glob("*.service")) + sorted(
        (DEPLOY / "systemd").glob("*.timer")
    )
    for unit in units:  # all first: a timer is verified with the service it starts
        # The units name /opt/istmo/venv; verify needs the binaries to exist.
        text = unit.read_text().replace("/opt/istmo/venv/bin", str(bindir))
        (tmp_path / unit.name).write_text(text)
    for unit in units:
        checked = run("systemd-analyze", "verify", tmp_path / unit.name)
        assert checked.returncode == 0, (unit.name, checked.stdout + checked.stderr)
        if unit.suffix == ".service":
            assert "ExecStart=" in unit.read_text()
    assert (tmp_path / "istmo-health.timer").exists()
