"""Subscriptions over HTTP: what topics an agency follows.

``GET /v1/subscriptions`` (scope ``bulletins:read``): the caller's own topics.
``GET`` and ``PUT /v1/agencies/{agency_id}/subscriptions`` (scope ``admin``): read or
replace an agency's set. Need-to-know is decided centrally, so agencies do not change
their own. A change is one transaction with one audit event per topic added or removed,
the administrator as actor (``broker.directory.subscriptions``); the running stack then rebuilds
its directory before the answer goes out (``broker.api.enrol.apply_directory_change``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from broker.api.context import (
    AUTHED,
    ApiProblem,
    ApiState,
    json_body,
    parse_json,
    problem_responses,
    raw_body,
    require,
)
from broker.api.enrol import apply_directory_change
from broker.api.oauth import Caller
from broker.directory.subscriptions import set_subscriptions, subscriptions_of
from schemas.errors import ConfigError
from schemas.ids import AGENCY_ID_PATTERN
from schemas.labels import TOPICS

__all__ = ["subscriptions_router"]

log = logging.getLogger("istmo.api")

_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)
Admin = Annotated[Caller, require("admin")]
AgencyPath = Annotated[
    str, Path(max_length=32, pattern=AGENCY_ID_PATTERN, description="An agency id")
]
# Any short string parses; an unknown topic is refused by name (422 unknown_topic).
TopicName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    Field(json_schema_extra={"enum": list(TOPICS)}),
]


class SubscriptionsBody(BaseModel):
    """The whole set of topics the agency follows from now on (may be empty)."""

    model_config = _STRICT
    topics: tuple[TopicName, ...] = Field(max_length=len(TOPICS))


class SubscriptionsAnswer(BaseModel):
    agency: str
    topics: list[str]


class SubscriptionsChanged(BaseModel):
    agency: str
    topics: list[str]
    added: list[str]
    removed: list[str]
    applied: bool = Field(description="Whether the running stack applied it already")


def subscriptions_router(state: ApiState) -> APIRouter:
    router = APIRouter()
    registry = state.registry

    async def read(agency: str, who: str) -> dict[str, Any]:
        topics = await asyncio.to_thread(subscriptions_of, registry, agency)
        if topics is None:
            raise ApiProblem(404, "not_found", "no such agency", client=who)
        return {"agency": agency, "topics": list(topics)}

    @router.get(
        "/v1/subscriptions",
        summary="The topics you follow",
        description="Administrators set them (`PUT /v1/agencies/{agency_id}/subscriptions`).",
        tags=["subscriptions"],
        response_model=SubscriptionsAnswer,
        responses=problem_responses(404, *AUTHED),
    )
    async def own(who: Annotated[Caller, require("bulletins:read")]) -> Any:
        return await read(who.id, who.id)

    @router.get(
        "/v1/agencies/{agency_id}/subscriptions",
        summary="The topics an agency follows",
        tags=["subscriptions", "administration"],
        response_model=SubscriptionsAnswer,
        responses=problem_responses(404, *AUTHED),
    )
    async def agency_get(agency_id: AgencyPath, who: Admin) -> Any:
        return await read(agency_id, who.id)

    @router.put(
        "/v1/agencies/{agency_id}/subscriptions",
        summary="Set the topics an agency follows",
        description=(
            "Replaces the whole set (at most one of each topic). One audit event per topic "
            "added (`subscription.added`) or removed (`subscription.removed`), with you as "
            "actor. Takes effect at once: an agency that no longer follows a topic is no "
            "longer a candidate recipient of bulletins about it."
        ),
        tags=["subscriptions", "administration"],
        response_model=SubscriptionsChanged,
        responses=problem_responses(404, 409, *AUTHED),
        openapi_extra=json_body(SubscriptionsBody),
    )
    async def agency_put(
        agency_id: AgencyPath, who: Admin, body: Annotated[bytes, Depends(raw_body)]
    ) -> Any:
        req = parse_json(SubscriptionsBody, body, state.limits)
        try:
            change = await asyncio.to_thread(
                set_subscriptions, registry, agency_id, req.topics, who.id, clock=state.clock
            )
        except ConfigError as exc:
            status = {"unknown_agency": 404, "unknown_topic": 422}.get(exc.code, 409)
            raise ApiProblem(status, exc.code, str(exc)[:300], client=who.id) from exc
        applied = False
        if change.changed:
            applied = await apply_directory_change(state)
            log.info(
                "subscriptions of %s set by %s: +%s -%s",
                agency_id,
                who.id,
                ",".join(change.added) or "none",
                ",".join(change.removed) or "none",
            )
        return {
            "agency": agency_id,
            "topics": list(change.topics),
            "added": list(change.added),
            "removed": list(change.removed),
            "applied": applied,
        }

    return router
