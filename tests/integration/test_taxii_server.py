"""`istmo taxii serve` as a subprocess over a real archive, read with OASIS's taxii2-client;
every object checked by stix2-validator and parsed by stix2; the refusals it must make."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest
import requests
import stix2
from stix2validator import ValidationOptions, validate_instance
from taxii2client.v21 import ApiRoot, Server, as_pages

from clients.archive import Archive
from clients.archive_keys import ArchiveSecret
from clients.keystore import save_keystore
from clients.results import ReceivedBulletin, Withdrawn
from clients.stix import TLP2_MARKINGS, collection_id
from schemas.keys import SigningKey
from schemas.keystore import new_keystore
from schemas.labels import Classification, Labels, Tlp
from schemas.natskeys import new_user_seed
from tests.stackproc import ISTMO, free_port, interrupt
from tests.waiting import eventually_sync

# Tens of seconds of stack start-up: run among the first files (tests/conftest.py).
pytestmark = pytest.mark.slow

TOKEN = "0123456789abcdef0123456789abcdef-taxii"
PASSPHRASE = "the desk's own passphrase"
TAXII = "application/taxii+json;version=2.1"
N = 250


class Bearer(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


def bulletin(n: int, *, tlp: Tlp = Tlp.AMBER, **extra: object) -> ReceivedBulletin:
    return ReceivedBulletin(
        **{  # type: ignore[arg-type]  # the test's own fields
            "id": f"6f1c0a2e-0000-4000-8000-{n:012d}",
            "originator": "gt-police",
            "labels": Labels(
                topic="drug-trafficking",
                classification=Classification.RESTRICTED,
                tlp=tlp,
                rel_to=("SICA",),
            ),
            "title": f"Go-fast boat {n}",
            "body": f"Sighting number {n} off Puerto Barrios.",
            "created_at": 1_780_000_000 + n,
            "received_at": 1_780_000_100 + n,
            "caveats": (),
            **extra,
        }
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("taxii")
    ks, _, _ = new_keystore(
        agency="sv-police",
        nats_seed=new_user_seed(),
        directory_key=SigningKey.generate().verify_key,
        now=int(time.time()),
    )
    save_keystore(d / "sv-police.json", ks)
    (d / "pass").write_text(PASSPHRASE + "\n")
    (d / "token").write_text(TOKEN + "\n")
    (d / "token").chmod(0o600)
    with Archive.open(
        d / "sv-police.archive.sqlite",
        "sv-police",
        lambda: ArchiveSecret("passphrase", PASSPHRASE.encode()),
    ) as archive:
        for n in range(1, N + 1):
            archive.add(bulletin(n))
        archive.add(bulletin(N + 1, tlp=Tlp.RED))  # above the default ceiling
        archive.add(bulletin(N + 2))  # withdrawn below
        archive.withdraw(Withdrawn(bulletin(N + 2).id, "gt-police", "wrong boat", 1, True))
        archive.add(
            bulletin(N + 3, in_reply_to=bulletin(1).id, thread=bulletin(1).id, title="Re: boat")
        )
    port = free_port()
    proc = subprocess.Popen(
        [ISTMO, "taxii", "serve", "--as", str(d / "sv-police.json"), "--port", str(port),
         "--passphrase-file", str(d / "pass"), "--token-file", str(d / "token")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"istmo taxii serve exited: {proc.communicate()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        eventually_sync(listening, what="the TAXII server to listen")
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    yield f"http://127.0.0.1:{port}"
    out, err = interrupt(proc)
    assert TOKEN not in out + err
    assert "Puerto Barrios" not in out + err


def test_taxii2_client_discovers_pages_and_reads(served: str) -> None:
    server = Server(f"{served}/taxii2/", auth=Bearer(TOKEN))
    (root,) = server.api_roots
    assert isinstance(root, ApiRoot)
    assert root.versions == [TAXII]
    assert {c.title for c in root.collections} >= {"drug-trafficking", "migration"}
    (drugs,) = [c for c in root.collections if c.title == "drug-trafficking"]
    assert drugs.id == collection_id("drug-trafficking")
    assert drugs.can_read
    assert not drugs.can_write

    pages = list(as_pages(drugs.get_objects, per_request=100))
    assert [len(p.get("objects", [])) for p in pages] == [100, 100, 51]
    assert [p["more"] for p in pages] == [True, True, False]
    objects = [o for p in pages for o in p["objects"]]
    ids = [o["id"] for o in objects]
    assert len(set(ids)) == N + 1  # every bulletin once, and the reply
    assert f"report--{bulletin(N + 1).id}" not in ids  # TLP:RED stays out by default
    assert f"report--{bulletin(N + 2).id}" not in ids  # withdrawn by its originator
    (note,) = [o for o in objects if o["type"] == "note"]
    assert note["object_refs"] == [f"report--{bulletin(1).id}"]

    options = ValidationOptions(version="2.1", strict=True)
    for obj in [*objects[:20], note]:
        result = validate_instance(obj, options)
        assert result.is_valid, result.as_dict()
        parsed = stix2.parse(obj, allow_custom=False)
        assert parsed.object_marking_refs == [TLP2_MARKINGS[Tlp.AMBER]]

    one = drugs.get_object(f"report--{bulletin(7).id}")
    assert one["objects"][0]["name"] == "Go-fast boat 7"
    manifest = drugs.get_manifest(limit=5)
    assert [r["id"] for r in manifest["objects"]] == ids[:5]
    assert manifest["more"] is True


def test_added_after_and_next(served: str) -> None:
    url = f"{served}/istmo/collections/{collection_id('drug-trafficking')}/objects/"
    headers = {"Accept": TAXII}
    first = requests.get(url, params={"limit": 10}, headers=headers, auth=Bearer(TOKEN), timeout=10)
    assert first.status_code == 200
    assert first.headers["content-type"] == TAXII
    last_added = first.headers["X-TAXII-Date-Added-Last"]
    after = requests.get(
        url, params={"limit": 10, "added_after": last_added}, headers=headers,
        auth=Bearer(TOKEN), timeout=10,
    )  # fmt: skip
    nexted = requests.get(
        url, params={"limit": 10, "next": first.json()["next"]}, headers=headers,
        auth=Bearer(TOKEN), timeout=10,
    )  # fmt: skip
    assert after.json()["objects"] == nexted.json()["objects"]
    assert after.json()["objects"][0]["name"] == "Go-fast boat 11"
    assert after.headers["X-TAXII-Date-Added-First"] > last_added
    reports = requests.get(
        url, params={"match[type]": "note"}, headers=headers, auth=Bearer(TOKEN), timeout=10
    )
    assert [o["type"] for o in reports.json()["objects"]] == ["note"]


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/taxii2/", {"Accept": TAXII}, 401),  # no credentials
        ("GET", "/taxii2/", {"Accept": TAXII, "Authorization": "Bearer wrong"}, 401),
        ("GET", "/taxii2/", {"Accept": TAXII, "Authorization": f"Basic {TOKEN}"}, 401),
        ("GET", "/taxii2/", {"Accept": TAXII, "Host": "evil.example:80", "auth": "1"}, 421),
        ("POST", "/istmo/", {"Accept": TAXII, "auth": "1"}, 405),
        ("GET", "/istmo/", {"Accept": "application/json", "auth": "1"}, 406),
        ("GET", "/istmo/", {"Accept": "application/taxii+json;version=2.0", "auth": "1"}, 406),
        ("GET", "/istmo/collections/nope/", {"Accept": TAXII, "auth": "1"}, 404),
        (
            "GET",
            f"/istmo/collections/{collection_id('migration')}/objects/?limit=0",
            {"Accept": TAXII, "auth": "1"},
            400,
        ),
        (
            "GET",
            f"/istmo/collections/{collection_id('migration')}/objects/?added_after=yesterday",
            {"Accept": TAXII, "auth": "1"},
            400,
        ),
        (
            "GET",
            f"/istmo/collections/{collection_id('drug-trafficking')}/objects/"
            f"report--{bulletin(N + 1).id}/",
            {"Accept": TAXII, "auth": "1"},
            404,
        ),
    ],
)
def test_refusals(
    served: str, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    auth = Bearer(TOKEN) if headers.pop("auth", None) else None
    got = requests.request(method, served + path, headers=headers, auth=auth, timeout=10)
    assert got.status_code == status, got.text
    assert got.headers["content-type"] == TAXII
    body = json.loads(got.text)
    assert body["http_status"] == str(status)
    if status == 401:
        assert got.headers["WWW-Authenticate"] == 'Bearer realm="istmo"'
