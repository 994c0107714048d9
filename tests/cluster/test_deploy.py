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
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import yaml

from tests.cluster.conftest import free_port_run

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NODES = (1, 2, 3)


def run(*argv: str | Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, timeout=60, **kw
    )


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates and accounts.conf for the three nodes, made by deploy/nats's tools."""
    home = tmp_path_factory.mktemp("region")
    made = run("sh", DEPLOY / "nats" / "make-test-ca.sh", home / "ca")
    assert made.returncode == 0, made.stderr
    rendered = run(
        sys.executable,
        DEPLOY / "nats" / "render-accounts.py",
        "--data-dir",
        home / "istmo",
        "--out",
        home / "accounts.conf",
        "--demo",
        cwd=ROOT,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert (home / "accounts.conf").stat().st_mode & 0o077 == 0
    return home


def node_config(region: Path, node: int, *, ports: dict[str, int] | None = None) -> Path:
    """deploy/nats/nats-<node>.conf with its files under ``region`` (and, with ``ports``,
    its listeners and routes on loopback)."""
    text = (DEPLOY / "nats" / f"nats-{node}.conf").read_text()
    text = text.replace("/etc/nats/tls/", f"{region / 'ca' / f'nats-{node}'}/")
    text = text.replace("/var/lib/nats/jetstream", str(region / f"js-{node}"))
    if ports is not None:
        text = text.replace('host: "0.0.0.0"', 'host: "127.0.0.1"')
        text = text.replace("port: 4222", f"port: {ports['client'] + node - 1}")
        text = text.replace("port: 6222", f"port: {ports['route'] + node - 1}")
        text = text.replace('"127.0.0.1:8222"', f'"127.0.0.1:{ports["http"] + node - 1}"')
        for peer in NODES:
            text = text.replace(
                f"nats-{peer}.region.example:6222", f"localhost:{ports['route'] + peer - 1}"
            )
    conf_dir = region / f"etc-{node}"
    conf_dir.mkdir(exist_ok=True)
    shutil.copy(region / "accounts.conf", conf_dir / "accounts.conf")
    (conf_dir / "nats.conf").write_text(text)
    return conf_dir / "nats.conf"


def start_node(binary: Path, conf: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(binary), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )


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
    ports = {"client": free_port_run(3), "route": free_port_run(3), "http": free_port_run(3)}
    procs = []
    try:
        for node in NODES:
            conf = node_config(region, node, ports=ports)
            procs.append(start_node(nats_binary, conf, region / f"nats-{node}.log"))
        ca = ssl.create_default_context(cafile=str(region / "ca" / "ca.pem"))
        url = f"tls://localhost:{ports['client']}"
        relay_seed = (region / "istmo" / "broker" / "relay.seed").read_text().strip()

        async def meta_leader() -> str | None:
            nc = await asyncio.wait_for(
                nats.connect(
                    url,
                    tls=ca,
                    nkeys_seed_str=relay_seed,
                    connect_timeout=2,
                    allow_reconnect=False,
                ),
                10,
            )
            try:
                info = await nc.jetstream(timeout=2).account_info()
                return "ok" if info is not None else None
            except nats.errors.Error:
                return None
            finally:
                await nc.close()

        deadline = time.monotonic() + 30
        while await meta_leader() is None:
            assert time.monotonic() < deadline, (region / "nats-1.log").read_text()[-2000:]
            await asyncio.sleep(0.2)

        # The routes came up over mutual TLS: every node sees the other two.
        log1 = (region / "nats-1.log").read_text()
        assert "Route connection created" in log1, log1[-2000:]

        # S-24: a client that does not start TLS gets an error and nothing else.
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", ports["client"] + 1), 5
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
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
