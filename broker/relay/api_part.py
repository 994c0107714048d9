"""What each part of the agency API answers from (``broker.relay.agency_api``).

Recalls, replies and RFIs, forwarding, community groups and attachment chunks each get
their own class; all of them read the same settings, registry and directory, and take
time from the same clock, so a test can hand one a ``ManualClock``.
"""

from __future__ import annotations

from broker.clock import SYSTEM_CLOCK, Clock
from broker.config import Settings
from broker.directory.service import DirectoryService
from broker.store.registry import Registry

__all__ = ["ApiPart"]


class ApiPart:
    """The settings, registry, directory and clock an agency API part answers from."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        directory: DirectoryService,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.directory = directory
        self.clock = clock
