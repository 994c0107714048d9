"""An agency's SDK and the ``istmo`` CLI over TLS against the deploy/ region, end to end.

The three ``deploy/nats/nats-N.conf`` run as one TLS cluster on loopback (certificates
from ``make-test-ca.sh``, accounts from ``render-accounts.py``); the broker runs as the
systemd units run it (``istmo-api.service``: ``istmo up --join ... --stream-replicas 3
--no-relay --no-sequencer``; ``istmo-relay@.service``: ``istmo relay``), with
``SSL_CERT_FILE`` set to the region's CA as ``istmo.env.example`` sets it. Agencies hold
only their keystores and the CA, on "their own machines" (directories without the broker's
``stack.json``), and reach the region by its ``tls://`` URLs:

* gt-police publishes through node 2, rc-drugs receives through node 3, and gt-police
  sees rc-drugs' receipt; every step crosses the nodes' mutually authenticated routes.
* Without the region's CA (no ``SSL_CERT_FILE``, or an unrelated CA) the CLI stops at
  once, saying the NATS certificate could not be verified and to set ``SSL_CERT_FILE``,
  with no traceback; the same for a ``nats://`` URL, since the nodes require TLS and the
  client upgrades to it. With the CA a ``nats://`` URL therefore works, over TLS.

What this leaves to others: the sequencer (not needed to publish or receive), PostgreSQL
(the broker's SQLite from ``render-accounts.py --demo`` stands in), the TLS proxy in front
of the API, and directory changes (``nats-accounts.conf``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from schemas.subjects import DELIVER_STREAM
from tests.cluster.conftest import DEPLOY, DeployCluster, deploy_cluster, free_port_run, run
from tests.stackproc import ISTMO, UpProcess, publish_args
from tests.waiting import eventually_sync
from tests.warm import run_istmo

pytestmark = pytest.mark.slow

BULLETIN_TITLE = "Go-fast boats sighted"
BULLETIN_BODY = "Two go-fast boats left Puerto Barrios at 03:10, heading north-east.\n"
# What an unverifiable certificate must be reported as (clients/sdk.py IstmoClient.connect).
UNTRUSTED = "could not be verified"


def unit_argv(unit: str, env: dict[str, str]) -> list[str]:
    """The ExecStart of ``deploy/systemd/<unit>``, with its ``${VARS}`` from ``env`` and
    this checkout's ``istmo`` for ``/opt/istmo/venv/bin/istmo``."""
    text = (DEPLOY / "systemd" / unit).read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == "/opt/istmo/venv/bin/istmo", argv
    return [ISTMO] + [re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], a) for a in argv[1:]]


def _base_env() -> dict[str, str]:
    """This environment without any trust anchor or Istmo setting of the developer's."""
    drop = ("SSL_CERT_FILE", "SSL_CERT_DIR")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("ISTMO_")}


@dataclass
class ApiProcess(UpProcess):
    """``istmo up`` as ``istmo-api.service`` runs it: joining the region's NATS."""

    unit_env: dict[str, str] = field(default_factory=dict)

    def _popen(self, log: Any) -> subprocess.Popen[str]:
        argv = unit_argv("istmo-api.service", self.unit_env)
        argv[argv.index("--api-port") + 1] = str(self.ports["api"])  # not 8844 here
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**self.unit_env, "PYTHONUNBUFFERED": "1"},
        )


@dataclass
class RelayProcess:
    """``istmo relay`` as ``istmo-relay@.service`` runs it (stopped with SIGTERM, as
    systemd stops it)."""

    unit_env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> RelayProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                unit_argv("istmo-relay@.service", self.unit_env),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.unit_env, "PYTHONUNBUFFERED": "1"},
            )
        proc = self.proc

        def connected() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"istmo relay exited: {self.output[-2000:]}")
            return "relay connected" in self.output

        eventually_sync(
            connected,
            what="istmo relay to connect",
            timeout=timeout,
            interval=0.1,
            context=lambda: self.output,
        )
        return self

    @property
    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@dataclass(frozen=True)
class TlsRegion:
    """The running region, and how an agency reaches it."""

    cluster: DeployCluster
    api: ApiProcess
    relay: RelayProcess
    agencies: Path  # <agency>/<agency>.json: each agency's own machine
    other_ca: Path  # a CA the region's certificates do not chain to

    @property
    def ca(self) -> Path:
        return self.cluster.ca

    def keystore(self, agency: str) -> Path:
        return self.agencies / agency / f"{agency}.json"

    def istmo(
        self, *args: str, agency: str, trust: Path | None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``istmo ARGS --as <agency's keystore>`` on the agency's machine, trusting
        ``trust`` (``SSL_CERT_FILE``; None: only the system's CAs)."""
        env = _base_env()
        if trust is not None:
            env["SSL_CERT_FILE"] = str(trust)
        command, *rest = args
        return run_istmo(
            [ISTMO, command, "--as", str(self.keystore(agency)), *rest],
            timeout=timeout,
            env=env,
            cwd=self.agencies / agency,  # no ./.istmo here: nothing but --nats-url to go by
        )


@pytest.fixture(scope="module")
def tls_region(region: Path, nats_binary: Path) -> Iterator[TlsRegion]:
    """The deploy/ cluster, the API and one relay joined to it over TLS; every process is
    stopped on the way out, the broker's before the nodes."""
    made = run("sh", DEPLOY / "nats" / "make-test-ca.sh", region / "other-ca", "nats-1")
    assert made.returncode == 0, made.stderr
    agencies = region / "agencies"
    for agency in ("gt-police", "rc-drugs"):
        (agencies / agency).mkdir(parents=True, mode=0o700)
        shutil.copy2(region / "istmo" / "keys" / f"{agency}.json", agencies / agency)

    with contextlib.ExitStack() as stopping:
        cluster = stopping.enter_context(deploy_cluster(region, nats_binary))
        asyncio.run(cluster.wait_ready())
        assert "SSL_CERT_FILE=" in (DEPLOY / "systemd" / "istmo.env.example").read_text()
        unit_env = {
            **_base_env(),
            "ISTMO_NATS_URLS": ",".join(cluster.urls),
            "ISTMO_DATA_DIR": str(region / "istmo"),
            "SSL_CERT_FILE": str(cluster.ca),
        }
        api = ApiProcess(region / "istmo", unit_env=unit_env, ports={"api": free_port_run(1)})
        stopping.callback(api.stop, 60)
        api.start(timeout=120)
        relay = RelayProcess(unit_env, region / "relay.log")
        stopping.callback(relay.stop)
        relay.start()
        yield TlsRegion(cluster, api, relay, agencies, region / "other-ca" / "ca.pem")


def _stream_replicas(cluster: DeployCluster, stream: str) -> int:
    """How many nodes hold ``stream``, from node 1's monitoring port."""
    url = f"http://127.0.0.1:{cluster.ports['http']}/jsz?acc=ISTMO&streams=true"
    with urllib.request.urlopen(url, timeout=5) as resp:
        jsz = json.loads(resp.read())
    for acc in jsz.get("account_details") or []:
        for info in acc.get("stream_detail") or []:
            if info.get("name") == stream:
                return 1 + len((info.get("cluster") or {}).get("replicas") or [])
    raise AssertionError(f"no stream {stream} on node 1: {jsz}")


def _no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # nor asyncio's warning on every TLS connection nats-py closes (nats-io/nats.py#727)
    assert "eof_received" not in done.stderr, done.stderr[-3000:]


def test_an_agency_publishes_and_another_receives_over_tls(tls_region: TlsRegion) -> None:
    node1, node2, node3 = tls_region.cluster.urls
    # `istmo up --join ... --stream-replicas 3` made the streams on the region's nodes.
    assert "joined " + ", ".join(tls_region.cluster.urls) in tls_region.api.output
    assert _stream_replicas(tls_region.cluster, DELIVER_STREAM) == 3

    published = tls_region.istmo(
        "publish",
        "--nats-url",
        node2,
        *publish_args(BULLETIN_TITLE, BULLETIN_BODY),
        "--json",
        agency="gt-police",
        trust=tls_region.ca,
    )
    assert published.returncode == 0, published.stderr
    _no_traceback(published)
    result = json.loads(published.stdout)
    bulletin_id = result["id"]
    assert result["state"] == "accepted", result
    assert "rc-drugs" in result["routed"], result

    received = tls_region.istmo(
        "receive",
        "--nats-url",
        node3,
        "--count",
        "1",
        "--timeout",
        "20",
        "--json",
        agency="rc-drugs",
        trust=tls_region.ca,
    )
    assert received.returncode == 0, received.stderr
    _no_traceback(received)
    lines = received.stdout.splitlines()
    assert len(lines) == 1, received.stdout
    bulletin = json.loads(lines[0])
    assert bulletin["id"] == bulletin_id
    assert bulletin["originator"] == "gt-police"
    assert bulletin["title"] == BULLETIN_TITLE
    assert bulletin["body"] == BULLETIN_BODY
    labels = bulletin["labels"]
    assert (labels["topic"], labels["classification"], labels["tlp"], labels["rel_to"]) == (
        "drug-trafficking",
        "RESTRICTED",
        "AMBER",
        ["SICA"],
    )

    # The receipt goes back over TLS too; asked for through node 1 with a nats:// URL:
    # the nodes require TLS, so the client upgrades and verifies the certificate.
    plain_scheme = node1.replace("tls://", "nats://")

    def received_at() -> dict[str, int | None]:
        receipts = tls_region.istmo(
            "receipts",
            bulletin_id,
            "--nats-url",
            plain_scheme,
            "--json",
            agency="gt-police",
            trust=tls_region.ca,
        )
        assert receipts.returncode == 0, receipts.stderr
        _no_traceback(receipts)
        return {r["agency"]: r["received_at"] for r in json.loads(receipts.stdout)["recipients"]}

    eventually_sync(
        received_at,
        until=lambda got: got["rc-drugs"] is not None,
        what="rc-drugs's receipt over TLS",
        interval=0.5,
    )

    for name, out in (("istmo up", tls_region.api.output), ("relay", tls_region.relay.output)):
        assert "Traceback" not in out, (name, out[-3000:])


@pytest.mark.parametrize(
    ("scheme", "trust"),
    [
        pytest.param("tls", None, id="tls-no-ca"),
        pytest.param("tls", "other", id="tls-unrelated-ca"),
        pytest.param("nats", None, id="nats-no-ca"),
        pytest.param("nats", "other", id="nats-unrelated-ca"),
    ],
)
def test_without_the_region_ca_the_cli_says_so(
    tls_region: TlsRegion, scheme: str, trust: str | None
) -> None:
    url = tls_region.cluster.urls[2].replace("tls://", f"{scheme}://")
    refused = tls_region.istmo(
        "receive",
        "--nats-url",
        url,
        "--count",
        "1",
        # Far longer than the run may take: a refusal must come from the connection, not
        # from the receive timing out (nats-py alone hangs for ever: nats-io/nats.py#718).
        "--timeout",
        "600",
        "--json",
        agency="rc-drugs",
        trust=tls_region.other_ca if trust == "other" else None,
        timeout=90,
    )
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert refused.stdout == ""
    _no_traceback(refused)
    message, hint = refused.stderr.strip().splitlines()[-2:]
    assert message.startswith("istmo: "), refused.stderr
    assert f"the certificate of NATS at {url} {UNTRUSTED}" in message, message
    assert hint == "  hint: set SSL_CERT_FILE to the region's CA certificate", refused.stderr


def test_a_relay_without_the_region_ca_stops_with_the_reason(
    tls_region: TlsRegion, tmp_path: Path
) -> None:
    """Under systemd a worker that hung after a failed handshake would neither run nor
    fail (Restart=on-failure never fires): it must exit, saying why."""
    env = {k: v for k, v in tls_region.relay.unit_env.items() if k != "SSL_CERT_FILE"}
    refused = subprocess.run(
        unit_argv("istmo-relay@.service", env),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**env, "PYTHONUNBUFFERED": "1"},
        cwd=tmp_path,
    )
    assert refused.returncode != 0, refused.stdout + refused.stderr
    _no_traceback(refused)
    message, hint = refused.stderr.strip().splitlines()[-2:]
    assert UNTRUSTED in message, refused.stderr
    assert hint == "  hint: set SSL_CERT_FILE to the region's CA certificate", refused.stderr


def test_publishing_without_the_region_ca_fails_before_anything_is_sent(
    tls_region: TlsRegion,
) -> None:
    refused = tls_region.istmo(
        "publish",
        "--nats-url",
        tls_region.cluster.urls[0],
        *publish_args("never sent", "never sent"),
        agency="gt-police",
        trust=None,
        timeout=30,
    )
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert refused.stdout == ""  # no bulletin id: nothing was published
    _no_traceback(refused)
    assert UNTRUSTED in refused.stderr, refused.stderr
    assert "SSL_CERT_FILE" in refused.stderr, refused.stderr
