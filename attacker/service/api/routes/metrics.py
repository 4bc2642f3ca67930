"""Prometheus metrics (``attacker.service.metrics``) on ``GET /metrics``, behind the bearer token.

Behind the token, as every route but ``/healthz``: the metrics reveal the queue
(which ``/readyz`` already keeps behind it) and how well each audited model can
be inverted, which is the audit's result. Prometheus sends the token itself
(``authorization: {credentials_file: ...}`` in the scrape config). The route is
left out of the OpenAPI schema: it is for a scraper, not for API clients.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
def get_metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
