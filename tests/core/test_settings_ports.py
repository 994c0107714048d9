"""Ports in ``broker.config.Settings``: NATS may pick its own, the HTTP API may not."""

from __future__ import annotations

import pytest

from broker.config import Settings
from schemas.errors import ConfigError


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        ({"nats_port": 0, "nats_http_port": 0}, None),  # the stack file says which
        ({"api_port": 8844}, None),
        ({"api_port": 0}, "needs a fixed port"),  # tokens name the API's URL
        ({"api_port": 70000}, "not a TCP port"),
        ({"nats_port": -1}, "not a TCP port"),
    ],
)
def test_ports(overrides: dict[str, int], refused: str | None) -> None:
    if refused is None:
        Settings.from_env({}, **overrides)
        return
    with pytest.raises(ConfigError, match=refused) as caught:
        Settings.from_env({}, **overrides)
    if "fixed" in refused:
        assert caught.value.hint == "give --api-port a free port, such as 8844"
