"""Telling a running stack that the data directory changed under it.

Commands run from the broker's shell (``istmo policy adopt``, ``istmo admin ...``) change
the registry or the policy archive, then publish on ``istmo.control.<what>`` as the
broker's own NATS user; agency accounts cannot publish there.
"""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client as NATS

from broker.config import Settings
from broker.runtime.broker_user import connect_broker
from broker.runtime.stackfile import read_stack_file
from schemas.errors import BusUnavailable

__all__ = ["connect_running_stack", "notify_running_stack"]


async def connect_running_stack(settings: Settings) -> tuple[NATS, str] | None:
    """The broker's connection to the NATS of the stack running for the data directory of
    ``settings``, and its address; the caller closes it.

    Returns:
        None when no stack is recorded as running for it.

    Raises:
        BusUnavailable: a stack is recorded as running but its NATS does not answer (a
            stack that died leaves its ``stack.json``: one reconnect, not nats-py's
            endless retry, so the caller hears it in half a second).
    """
    info = read_stack_file(settings.data_dir)
    url = info.get("nats_url") if info else None
    if not isinstance(url, str):
        return None
    return await connect_broker(settings, url, reconnects=1), url


async def notify_running_stack(settings: Settings, subject: str) -> bool:
    """Publish on ``subject`` to the stack running for the data directory of ``settings``
    (as the broker's own NATS user, without opening the rest of the directory).

    Returns:
        False when no stack runs for it (the change takes effect at the next start).

    Raises:
        BusUnavailable: a stack is recorded as running but its NATS does not answer.
    """
    running = await connect_running_stack(settings)
    if running is None:
        return False
    nc, url = running
    try:
        await nc.publish(subject, b"{}")
        await nc.flush()
    except nats.errors.Error as exc:
        raise BusUnavailable(f"could not reach the running stack at {url}") from exc
    finally:
        await nc.close()
    return True
