"""A gateway agency opens what crossed a partner link only under its own pin (ADR 33,
"Opening on the partner's side"): deliveries stored on a real region's delivery stream as
its ingest stores them (the envelope, the link's name and the sending region's signed
record of the originator as headers), received by the real SDK over a real nats-server.

- no pin for the link: not opened, a ConfigError that says what to pin, and it stays;
- a pin of another key: not opened (``partner_untrusted``), and it stays;
- under the right pin, a record whose signature is not the pinned key's, a record naming
  an agency of this region, and an envelope tampered after signing are each dropped, and
  the bulletin that crossed intact is opened, read, and shows its region; it is acked
  without a receipt (receipts do not cross links);
- dead-lettered and redriven, a crossed delivery keeps the headers it opens with.

The live link (A's guard, B's ingest, B's gateway reading) is test_partner_link_live.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from broker.bus.batch import Message, publish_batch
from broker.bus.connect import connect_as_broker
from broker.relay.dead_letters import handle_advisory, list_dead_letters, redrive
from broker.store.registry import Registry
from clients.keystore import load_keystore
from clients.partners import PartnerPin, PartnerPins
from clients.results import ReceivedBulletin
from clients.sdk import IstmoClient
from schemas.canonical import b64e, canonical_json
from schemas.directory import (
    AgencyRecord,
    DirectoryExcerpt,
    SignedExcerpt,
    SigningKeyRecord,
    directory_version,
    sign_excerpt,
)
from schemas.envelope import Content
from schemas.errors import ConfigError, SignatureError
from schemas.ids import AgencyId
from schemas.keys import SigningKey
from schemas.labels import Classification, Handling, Labels, Tlp
from schemas.partner_delivery import crossed_headers, parse_partner_record
from schemas.sealing import encode_envelope, seal
from schemas.subjects import DELIVER_STREAM, deliver_durable, deliver_durables, deliver_subject
from tests.integration.stack_inproc import nats_url, running_stack
from tests.waiting import eventually

LINK = "eu-siena"
A_DIRECTORY = SigningKey.generate()  # region A's directory key, which B's gateway pins
A_SIGNER = SigningKey.generate()  # A's originator's signing key
FOREIGN, LOCAL = "xa-police", "gt-police"  # an agency of A only; one of B (this region)
LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.GREEN,
    rel_to=("GT", "EU-SIENA"),
    handling=(Handling.H0,),
)


def _pin(key: SigningKey = A_DIRECTORY) -> PartnerPins:
    vk = key.verify_key
    pin = PartnerPin(
        link=LINK, region="istmo-a", directory_kid=vk.kid, directory_public=b64e(vk.public)
    )
    return PartnerPins(partners=(pin,))


def _record(agency: str = FOREIGN, signer: SigningKey = A_SIGNER) -> SignedExcerpt:
    vk = signer.verify_key
    now = int(time.time())
    record = AgencyRecord(
        id=agency,
        name="A's police",
        state="GT",
        sector="police",
        status="active",
        signing_keys=(SigningKeyRecord(kid=vk.kid, public=b64e(vk.public), created_at=now - 60),),
    )
    excerpt = DirectoryExcerpt(
        v=1, directory_version=directory_version(7, "0" * 32), issued_at=now, agencies=(record,)
    )
    return sign_excerpt(excerpt, A_DIRECTORY)


def _sealed(to: str, keys: Path, text: str, originator: str = FOREIGN) -> tuple[str, bytes]:
    public = load_keystore(keys / f"{to}.json")
    stored = public.encryption_keys[-1]
    key = public.encryption_key(stored.kid)
    assert key is not None
    env = seal(
        content=Content(title="Go-fast boat", text=text),
        labels=LABELS,
        originator=AgencyId(originator),
        signing_key=A_SIGNER,
        recipients={AgencyId(to): key.public_key},
        now=int(time.time()) - 5,
    )
    return env.header.bulletin_id, encode_envelope(env)


async def test_a_gateway_opens_what_crossed_only_under_its_pin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="istmo.sdk")
    async with running_stack(tmp_path / "region-b") as b:
        keys, url = b.settings.keys_dir, nats_url(b)
        seed = (b.settings.broker_dir / "relay.seed").read_text().strip()
        nc = await connect_as_broker(url, seed=seed, name="test", reconnects=0)
        js = nc.jetstream()

        async def deliver(to: str, bid: str, raw: bytes, record: SignedExcerpt) -> int:
            extra = tuple(crossed_headers(LINK, record).items())
            subject = deliver_subject(to, LABELS.precedence)
            message = Message(subject, raw, f"{bid}:{to}", None, extra)
            return (await publish_batch(nc, DELIVER_STREAM, [message])).acks[-1].seq

        got: list[ReceivedBulletin] = []

        async def handler(bulletin: ReceivedBulletin) -> None:
            got.append(bulletin)

        try:
            # No pin for the link (no pins file beside the keystore): not opened, and
            # the error says what to pin.
            bid, raw = _sealed("hn-police", keys, "CANARY-unpinned")
            await deliver("hn-police", bid, raw, _record())
            async with await IstmoClient.connect(keys / "hn-police.json", url) as c:
                with pytest.raises(ConfigError) as unpinned:
                    await c.receive(handler, count=1, timeout=30)
            assert unpinned.value.code == "partner_not_pinned"
            assert f"istmo partner pin --link {LINK}" in (unpinned.value.hint or "")

            # A pin of another key: not opened either.
            bid, raw = _sealed("ni-police", keys, "CANARY-wrong-pin")
            await deliver("ni-police", bid, raw, _record())
            wrong = _pin(SigningKey.generate())
            async with await IstmoClient.connect(keys / "ni-police.json", url, partners=wrong) as c:
                with pytest.raises(SignatureError) as mispinned:
                    await c.receive(handler, count=1, timeout=30)
            assert mispinned.value.code == "partner_untrusted"
            assert got == []

            # Under the right pin (a pins file, as `istmo partner pin` writes it): three
            # hostile deliveries, then the one that crossed intact.
            gw = "sv-police"
            forged = _record().model_copy(
                update={"sig": b64e(SigningKey.generate().sign(b"not the excerpt"))}
            )
            bid, raw = _sealed(gw, keys, "CANARY-forged-record")
            await deliver(gw, bid, raw, forged)  # the pinned kid, another key's signature
            bid, raw = _sealed(gw, keys, "CANARY-local", originator=LOCAL)
            await deliver(gw, bid, raw, _record(LOCAL))  # A vouching for one of B's own
            bid, raw = _sealed(gw, keys, "CANARY-tampered")
            env = json.loads(raw)
            env["header"]["labels"]["tlp"] = "CLEAR"
            await deliver(gw, bid, canonical_json(env), _record())
            good, raw = _sealed(gw, keys, "the boat leaves on Tuesday")
            await deliver(gw, good, raw, _record())
            pins = keys / "sv-police.partners.json"
            pins.write_text(_pin().model_dump_json())
            async with await IstmoClient.connect(keys / "sv-police.json", url) as c:
                assert await c.receive(handler, count=1, timeout=30) == 1
            [opened] = got
            assert (opened.id, opened.region) == (good, "istmo-a")
            assert opened.body == "the boat leaves on Tuesday"
            assert opened.sender == "xa-police (istmo-a)"
            assert opened.to_json()["region"] == "istmo-a"

            # Each hostile one dropped, the good one acked (no receipt sent): nothing waits.
            async def waiting() -> tuple[int, int]:
                info = await js.consumer_info(DELIVER_STREAM, deliver_durables(gw)[1])
                return info.num_pending, info.num_ack_pending

            await eventually(waiting, what="every delivery settled", until=lambda n: n == (0, 0))
            refused = [
                r.getMessage().rsplit(": ", 1)[-1]
                for r in caplog.records
                if "refused" in r.getMessage()
            ]
            assert refused == ["partner_record_forged", "partner_record_local", "signature_invalid"]

            # Dead-lettered (ten attempts: e.g. hours without a pin) and redriven, it keeps
            # the headers it opens with.
            bid, raw = _sealed("pa-police", keys, "CANARY-dead")
            record = _record()
            seq = await deliver("pa-police", bid, raw, record)
            registry = Registry(b.settings.db_url)
            try:
                advisory = {"type": "io.nats.jetstream.advisory.v1.max_deliver",
                            "stream": DELIVER_STREAM, "consumer": deliver_durable("pa-police"),
                            "stream_seq": seq, "deliveries": 10}  # fmt: skip
                assert await handle_advisory(js, registry, json.dumps(advisory).encode())
                letters = list_dead_letters(registry, agency="pa-police")
                done = await redrive(js, registry, letters, actor="test")
                assert [outcome for _, outcome in done] == ["redriven"]
            finally:
                registry.close()
            again = await js.get_last_msg(
                DELIVER_STREAM, deliver_subject("pa-police", LABELS.precedence)
            )
            assert (again.seq != seq, again.data) == (True, raw)
            assert parse_partner_record(again.headers or {}) == (LINK, record)
        finally:
            await nc.close()
