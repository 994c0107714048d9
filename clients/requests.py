"""Requests to the broker over NATS request/reply (ADR 0001), typed both ways.

``ask`` sends one request model of ``schemas.agency`` on the agency's own
``istmo.api.<agency>.<op>`` and returns the reply model of that operation, or raises what
the answer means (``clients.errors``). ``read_reply`` is its pure half. This module leaves
what is inside an answer (checking a directory excerpt's signature) to its callers.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from pydantic import BaseModel, ValidationError

from clients.connection import connection_lost
from clients.errors import error_for
from schemas.agency import MAX_ERROR_MESSAGE_CHARS, ApiOp, encode_request
from schemas.canonical import strict_loads
from schemas.directory import MAX_EXCERPT_BYTES
from schemas.envelope import parse_model
from schemas.errors import BusUnavailable, EnvelopeError, IstmoError
from schemas.subjects import api_subject

__all__ = ["MAX_REPLY_BYTES", "REQUEST_TIMEOUT_S", "ask", "error_in", "make_request", "read_reply"]

R = TypeVar("R", bound=BaseModel)
M = TypeVar("M", bound=BaseModel)

REQUEST_TIMEOUT_S = 5.0
# The largest answer is a resolve's signed excerpt; NATS's own message limit is lower.
MAX_REPLY_BYTES = MAX_EXCERPT_BYTES
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


async def ask(
    nc: NATS,
    agency: str,
    op: ApiOp,
    request: BaseModel,
    reply: type[R],
    *,
    timeout: float = REQUEST_TIMEOUT_S,
) -> R:
    """Send ``request`` as ``agency`` and return the broker's ``reply``.

    Raises:
        BusUnavailable: nobody answered within ``timeout`` (no relay running, or it hung),
            the broker answered that it failed (code ``internal``), or the connection is
            closed (code ``not_authorized`` where NATS refused the agency's credentials).
        IstmoError: the broker refused the request: the exception ``clients.errors``
            names for its code (``PolicyDenied``, ``NotFound``, ``EnvelopeError`` ...).
        EnvelopeError: the answer is neither the reply nor an error reply.
    """
    try:
        msg = await nc.request(api_subject(agency, op), encode_request(request), timeout=timeout)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        raise BusUnavailable(f"the broker did not answer {op!r} (is the relay running?)") from exc
    except nats.errors.ConnectionClosedError as exc:
        raise connection_lost(nc, agency) from exc
    return read_reply(msg.data, reply, op=op)


def read_reply(raw: bytes, reply: type[R], *, op: str) -> R:
    """The ``reply`` model in ``raw``, or the exception an error reply stands for.

    Raises:
        IstmoError: ``raw`` is an error reply (see ``error_in``).
        EnvelopeError: ``raw`` is neither (code ``malformed`` or ``oversized``).
    """
    failed = error_in(strict_loads(raw, max_bytes=MAX_REPLY_BYTES))
    if failed is not None:
        raise failed
    return parse_model(reply, raw, max_bytes=MAX_REPLY_BYTES, what=f"the {op} answer")


def error_in(answer: Any) -> IstmoError | None:
    """The exception for ``answer`` if it is an error reply (``{"error": {"code",
    "message"}}``, the only reply with that one key), else None.

    Read by its shape rather than by ``schemas.agency.ErrorReply``: a newer broker may send
    a code this SDK does not know, which still gets an exception (``RequestRefused``).
    """
    if not (isinstance(answer, dict) and answer.keys() == {"error"}):
        return None
    detail = answer["error"]
    if not (isinstance(detail, dict) and detail.keys() == {"code", "message"}):
        return EnvelopeError("the broker's error answer is not well-formed", code="malformed")
    code, message = detail["code"], detail["message"]
    if not (isinstance(code, str) and _CODE.fullmatch(code) and isinstance(message, str)):
        return EnvelopeError("the broker's error answer is not well-formed", code="malformed")
    return error_for(code, message[:MAX_ERROR_MESSAGE_CHARS])


def make_request(model: type[M], **fields: object) -> M:
    """Build a request, refusing what the broker would refuse before it is sent.

    Raises:
        EnvelopeError: a field is not valid (code ``malformed``); the message names the
            field, never its value.
    """
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or model.__name__
        raise EnvelopeError(f"request {where}: {first['msg']}", code="malformed") from exc
