"""Telling a running stack that the data directory changed under it.

Commands run from the broker's shell (``istmo policy adopt``, ``istmo admin ...``) change
the registry or the policy archive, then publish on ``istmo.control.<what>`` as the
broker's own NATS user; agency accounts cannot publish there.
"""

from __future__ import annotations

import nats.errors

from broker.runtime.datadir import DataDir
from broker.runtime.stackfile import read_stack_file
from schemas.errors import BusUnavailable

__all__ = ["notify_running_stack"]


async def notify_running_stack(data: DataDir, subject: str) -> bool:
    """Publish on ``subject`` to the stack running for this data directory.

    Returns:
        False when no stack runs for it (the change takes effect at the next start).

    Raises:
        BusUnavailable: a stack is recorded as running but its NATS does not answer.
    """
    info = read_stack_file(data.settings.data_dir)
    url = info.get("nats_url") if info else None
    if not isinstance(url, str):
        return False
    nc = await data.connect(url)
    try:
        await nc.publish(subject, b"{}")
        await nc.flush()
    except nats.errors.Error as exc:
        raise BusUnavailable(f"could not reach the running stack at {url}") from exc
    finally:
        await nc.close()
    return True
