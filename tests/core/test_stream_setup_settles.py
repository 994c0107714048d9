"""Stream set-up waits out a JetStream leader that lacks the account's claims for a moment
(operator mode on a cluster), and nothing else. nats-py's JetStream context is stood in for
by an object answering as nats-server did in CI: our own code runs as it is."""

from __future__ import annotations

from typing import Any, cast

import pytest
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import ServiceUnavailableError

from broker.bus.streams import add_or_update_stream


class _Leader:
    """Answers ``add_stream`` with the errors given, in turn, then takes it."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.added = 0

    async def add_stream(self, config: StreamConfig) -> Any:
        if self.errors:
            raise self.errors.pop(0)
        self.added += 1


def _missing_account() -> ServiceUnavailableError:
    return ServiceUnavailableError(code=503, err_code=10035, description="account not found")


async def test_an_account_the_leader_lacks_for_a_moment_is_waited_for() -> None:
    leader = _Leader(_missing_account(), _missing_account())
    await add_or_update_stream(cast(JetStreamContext, leader), StreamConfig(name="S"))
    assert leader.added == 1


async def test_it_gives_up_after_its_bound() -> None:
    leader = _Leader(*[_missing_account() for _ in range(100)])
    with pytest.raises(ServiceUnavailableError):
        await add_or_update_stream(
            cast(JetStreamContext, leader), StreamConfig(name="S"), settle_s=0.3
        )
    assert leader.added == 0


async def test_another_unavailability_is_not_waited_for() -> None:
    other = ServiceUnavailableError(
        code=503, err_code=10008, description="jetstream temporarily unavailable"
    )
    leader = _Leader(other)
    with pytest.raises(ServiceUnavailableError):
        await add_or_update_stream(cast(JetStreamContext, leader), StreamConfig(name="S"))
    assert leader.errors == []
