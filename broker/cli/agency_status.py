"""``istmo admin suspend | reinstate | revoke``: an agency's status, changed with its audit
event and applied at once.

With a stack running, the command asks it over NATS (``broker.runtime.status_requests``):
the stack's registry is open, and the command imports neither the registry's stack nor
the rest of the data directory, about a second before a suspension takes effect (issue
16). With none, it writes the registry itself, opening only that; a registry still empty
gets the demo directory first, as every ``istmo admin`` command gives it (``DataDir``).
"""

from __future__ import annotations

import argparse
import asyncio

from broker.cli._common import operator_name, server_parts
from broker.config import Settings
from broker.runtime.control import notify_running_stack
from broker.runtime.status_requests import StatusRequest, ask_running_stack
from schemas.agency_status import Status
from schemas.errors import ConfigError

__all__ = ["status_command", "tell_running_stack"]

_STATUS: dict[str, Status] = {"suspend": "suspended", "reinstate": "active", "revoke": "revoked"}


def status_command(args: argparse.Namespace) -> int:
    settings = Settings.from_env(data_dir=args.data_dir, policy_dir=args.policy_dir)
    status = _STATUS[args.status_action]
    request = StatusRequest(args.agency, status, operator_name(), args.note)
    answer = asyncio.run(ask_running_stack(settings, request))
    if answer is None:  # no stack runs: the registry is written here
        return _write_here(settings, request)
    if answer.error is not None:
        raise ConfigError(answer.error, code=answer.code)
    print(f"{args.agency}: {answer.previous} -> {status}")
    if not answer.applied:
        print("recorded; the running stack could not apply it to NATS yet (its log says why)")
        return 1
    print("the running stack applied it")
    return 0


def _write_here(settings: Settings, request: StatusRequest) -> int:
    # The registry's stack is imported here only: with a stack running it is not needed.
    from broker.directory.lifecycle import set_agency_status
    from broker.store.registry import Registry

    registry = Registry(settings.db_url, broker_dir=settings.broker_dir)
    if registry.is_empty():
        registry.close()
        registry = (
            server_parts("runtime.datadir")
            .DataDir.open(settings, demo=True, out=lambda _line: None)
            .registry
        )
    try:
        before = set_agency_status(
            registry, request.agency, request.status, actor=request.actor, note=request.note
        )
    finally:
        registry.close()
    print(f"{request.agency}: {before} -> {request.status}")
    tell_running_stack(settings)
    return 0


def tell_running_stack(settings: Settings) -> None:
    """Tell the stack running for ``settings``' data directory that its directory
    changed, and say whether one did."""
    from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT

    if asyncio.run(notify_running_stack(settings, CONTROL_DIRECTORY_SUBJECT)):
        print("the running stack applied it")
    else:
        print("no running stack for this data directory: it applies at the next `istmo up`")
