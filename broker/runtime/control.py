"""Telling a running stack that the data directory changed under it.

Commands run from the broker's shell (``istmo policy adopt``, ``istmo admin ...``) change
the registry or the policy archive, then publish on ``istmo.control.<what>`` as the
broker's own NATS user; agency accounts cannot publish there.
"""

from __future__ import annotations

import nats.errors

from broker.config import Settings
from broker.runtime.broker_user import connect_broker
from broker.runtime.stackfile import read_stack_file
from schemas.errors import BusUnavailable

__all__ = ["notify_running_stack"]


async def notify_running_stack(settings: Settings, subject: str) -> bool:
    """Publish on ``subject`` to the stack running for the data directory of ``settings``
    (as the broker's own NATS user, without opening the rest of the directory).

    Returns:
        False when no stack runs for it (the change takes effect at the next start).

    Raises:
        BusUnavailable: a stack is recorded as running but its NATS does not answer.
    """
    info = read_stack_file(settings.data_dir)
    url = info.get("nats_url") if info else None
    if not isinstance(url, str):
        return False
    nc = await connect_broker(settings, url, reconnects=1)  # -1 would wait for ever
    try:
        await nc.publish(subject, b"{}")
        await nc.flush()
    except nats.errors.Error as exc:
        raise BusUnavailable(f"could not reach the running stack at {url}") from exc
    finally:
        await nc.close()
    return True
