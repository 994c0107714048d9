"""The HTTP API (FastAPI), public part: health, readiness and the signed directory.

Authenticated endpoints (OAuth 2.0 with private_key_jwt: bulletins, receipts, audit,
administration) belong to a later issue; until then nothing here needs a credential and
nothing here reveals more than the public directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI, Response

from broker.directory import DirectoryService
from broker.registry import Registry

__all__ = ["create_app"]


def create_app(
    registry: Registry, directory: DirectoryService, bus_ok: Callable[[], bool]
) -> FastAPI:
    """Build the app over live services; ``bus_ok`` tells whether NATS is connected."""
    app = FastAPI(
        title="Istmo broker API",
        version="0.1.0",
        description="Secure bulletin broker for Central America and the Caribbean.",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )

    @app.get("/healthz", summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="NATS and the database are reachable")
    def readyz(response: Response) -> dict[str, str]:
        bus = "ok" if bus_ok() else "down"
        try:
            registry.is_empty()
            db = "ok"
        except Exception:  # any failure means not ready; the detail stays in the log
            db = "down"
        if "down" in (bus, db):
            response.status_code = 503
        return {"nats": bus, "database": db}

    @app.get(
        "/v1/directory",
        summary="The whole directory, signed by the broker's directory key",
        response_description="A SignedExcerpt (schemas/json/signed-excerpt.schema.json)",
    )
    def get_directory() -> Response:
        body = directory.excerpt(list(directory.records), int(time.time()))
        return Response(content=body, media_type="application/json")

    @app.get("/v1/policy", summary="Active policy and directory versions")
    def get_policy() -> dict[str, object]:
        return {
            "policy_version": directory.bundle.version,
            "files": list(directory.bundle.files),
            "directory_version": directory.version,
        }

    return app
