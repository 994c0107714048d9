"""An agency's status changed by the running stack, at an operator's request over NATS.

``istmo admin suspend | reinstate | revoke`` used to write the registry itself, then tell
the running stack to apply it; importing the registry's stack (SQLAlchemy, SQLModel, the
pydantic models) took about a second before anything was written, and a suspension at
10,000 agencies took effect 1.4-2.0 s after the command started (issue 16: 1 s). With a
stack running, the command now sends its request on ``istmo.control.agency-status`` as
the broker's own NATS user (only the broker's account can publish on ``istmo.control.>``:
the same trust as opening the registry, which that user's seed sits beside), and the
stack, whose registry is open, records the change with its audit event and applies it
as the HTTP API does, then answers. With no stack running the command writes the
registry, as before.

Kept light on purpose: this module imports ``json`` and the broker's connection only, so
the command's own start stays short.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import cast

import nats.errors

from broker.config import Settings
from broker.runtime.control import connect_running_stack
from schemas.agency_status import STATUSES, Status
from schemas.errors import BusUnavailable, ConfigError, EnvelopeError

__all__ = [
    "MAX_NOTE",
    "STATUS_REQUEST_QUEUE",
    "STATUS_REQUEST_SUBJECT",
    "StatusAnswer",
    "StatusRequest",
    "ask_running_stack",
]

STATUS_REQUEST_SUBJECT = "istmo.control.agency-status"
STATUS_REQUEST_QUEUE = "istmo-agency-status"  # one process of the stack answers
MAX_NOTE = 200  # as the HTTP API's note
_MAX_REQUEST = 2048
_MAX_ACTOR = 200
# Long enough for a reload of every account in config mode at 10,000 agencies.
ANSWER_WITHIN_S = 60.0


@dataclass(frozen=True)
class StatusRequest:
    """Set ``agency``'s ``status``, by ``actor`` (the operator, for the audit log), for the
    reason ``note``."""

    agency: str
    status: Status
    actor: str
    note: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> StatusRequest:
        """A request as sent.

        Raises:
            ConfigError: not a request of this form, or a value out of bounds.
        """
        if len(data) > _MAX_REQUEST:
            raise ConfigError(f"a status request is at most {_MAX_REQUEST} bytes")
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise ConfigError("a status request is a JSON object") from exc
        if not isinstance(doc, dict) or set(doc) != {"agency", "status", "actor", "note"}:
            raise ConfigError("a status request holds agency, status, actor and note")
        agency, status, actor, note = (doc[k] for k in ("agency", "status", "actor", "note"))
        from schemas.ids import parse_agency_id  # pydantic: in the stack, not the command

        try:
            parse_agency_id(agency)
        except EnvelopeError as exc:
            raise ConfigError(str(exc)) from exc
        if status not in STATUSES:
            raise ConfigError("status is one of active, suspended, revoked")
        if not isinstance(actor, str) or not 0 < len(actor) <= _MAX_ACTOR:
            raise ConfigError(f"actor is a name of 1 to {_MAX_ACTOR} characters")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise ConfigError(f"note is at most {MAX_NOTE} characters")
        return cls(agency, cast(Status, status), actor, note)


@dataclass(frozen=True)
class StatusAnswer:
    """The stack's answer: the change made (``previous``; ``applied`` when NATS and the
    directory took it), or why not (``error``, with its ``code``)."""

    previous: str | None = None
    applied: bool = False
    error: str | None = None
    code: str | None = None

    def encode(self) -> bytes:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}).encode()

    @classmethod
    def parse(cls, data: bytes) -> StatusAnswer:
        """Raises:
        BusUnavailable: not an answer of this form (not the stack that should answer)."""
        try:
            doc = json.loads(data)
            answer = cls(**doc)
        except (ValueError, TypeError) as exc:
            raise BusUnavailable("the running stack's answer is not a status answer") from exc
        return answer


async def ask_running_stack(
    settings: Settings, request: StatusRequest, *, within_s: float = ANSWER_WITHIN_S
) -> StatusAnswer | None:
    """Ask the stack running for ``settings``' data directory to make ``request``.

    Returns:
        Its answer; None when no stack runs for it, its NATS does not answer, or
        nothing answers such requests (a stack of an Istmo before this one): the caller
        then writes the registry itself.

    Raises:
        BusUnavailable: the stack did not answer within ``within_s`` (the change may
            have been made: ``istmo admin agency show`` tells).
    """
    try:
        running = await connect_running_stack(settings)
    except BusUnavailable:
        return None  # recorded but gone: written here; telling it then says so
    if running is None:
        return None
    nc, url = running
    try:
        reply = await nc.request(STATUS_REQUEST_SUBJECT, request.encode(), timeout=within_s)
    except nats.errors.NoRespondersError:
        return None
    except nats.errors.TimeoutError as exc:
        raise BusUnavailable(
            f"the running stack did not answer within {within_s:.0f} s; whether the change "
            "was made, `istmo admin agency show` tells"
        ) from exc
    except nats.errors.Error as exc:
        raise BusUnavailable(f"could not reach the running stack at {url}") from exc
    finally:
        await nc.close()
    return StatusAnswer.parse(reply.data)
