"""A publish NATS never acknowledges (every broker process that could store it frozen):
the SDK says so with the bulletin's id, that it may or may not be stored, and that
publishing again would make a new bulletin; once the broker is back the same envelope
goes through once."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from clients.sdk import PublishUnacknowledged
from schemas.errors import BusUnavailable
from tests.faults.harness import Publisher, RelayProcess, Target, connect
from tests.stackproc import UpProcess, pause
from tests.waiting import eventually

pytestmark = pytest.mark.slow


async def test_an_unacknowledged_publish_names_the_bulletin(
    up_no_relay: UpProcess, tmp_path: Path
) -> None:
    target = Target.of_up(up_no_relay)
    relay = RelayProcess(target, tmp_path / "relay.log")
    relay.start()
    gt = await connect(target, "gt-police")
    frozen = [up_no_relay.proc, relay.proc]
    try:
        pub = Publisher(gt, retries=1)
        await pub.prepare()  # the relay resolves the recipients
        _, env = pub.envelope()
        for proc in frozen:  # every gate: istmo up's and the relay's
            assert proc is not None
            pause(proc.pid)  # every thread, the gate's too, stopped before publishing
        try:
            with pytest.raises(PublishUnacknowledged) as caught:
                await gt._publish_envelope(env, attempts=2)
        finally:
            for proc in frozen:
                assert proc is not None
                proc.send_signal(signal.SIGCONT)
        said = str(caught.value)
        assert caught.value.code == "unacknowledged"
        assert caught.value.bulletin_id == str(env.header.bulletin_id)
        assert str(env.header.bulletin_id) in said
        assert "may or may not be stored" in said
        assert "new bulletin" in said
        await gt._publish_envelope(env)  # the same envelope, once the gates answer again
        verdict = await eventually(
            lambda: gt.wait_for_verdict(str(env.header.bulletin_id), timeout=5),
            what="the resumed relay's verdict",
            until=lambda v: v.state != "pending",
            timeout=120,
            ignoring=(BusUnavailable,),
            context=lambda: relay.log.read_text()[-3000:],
        )
        assert verdict.state == "accepted"
    finally:
        await gt.close()
        relay.kill()
