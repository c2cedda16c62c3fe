"""Liveness and metrics: does the database answer, and what the bot has been doing."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify

from bot.app import services
from storage.db import ping

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    """Answer 200 when the database answers, else 503."""
    if ping(services(current_app).db):
        return jsonify(status="ok")
    return jsonify(status="unavailable", error="database does not answer"), 503


@bp.get("/metrics")
def metrics() -> Any:
    """Answer Prometheus' text format: every process's counters and the outbox now.

    No login: Prometheus scrapes without one. The reverse proxy keeps /metrics internal
    (docs/deploy.md), or ``[server] metrics = false`` turns it off. Always 200 while the
    process runs: a database that does not answer shows as ``desmigratif_db_up 0``.
    """
    svc = services(current_app)
    if not svc.config.server.metrics:
        abort(404, description="metrics are turned off here ([server] metrics)")
    from bot import metrics as m

    body, content_type = m.render(svc.db, svc.engine.clock)
    return Response(body, status=200, headers={"Content-Type": content_type,
                                               "Cache-Control": "no-store"})
