"""Liveness, readiness and Prometheus metrics (unauthenticated; operator network only)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from service.auth import EngineDep
from service.metrics import METRICS_CONTENT_TYPE as CONTENT_TYPE_LATEST
from service.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database is unreachable."}},
    summary="The database is reachable",
)
async def readyz(engine: EngineDep) -> Response:
    ready = await run_in_threadpool(engine.database.ping)
    return JSONResponse({"status": "ok" if ready else "unavailable"}, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format.", "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    content = await run_in_threadpool(request.app.state.metrics.exposition)
    return Response(content=content, media_type=CONTENT_TYPE_LATEST)
