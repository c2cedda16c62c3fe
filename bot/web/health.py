"""Liveness: does the database answer."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

from bot.app import services
from storage.db import ping

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Any:
    """Answer 200 when the database answers, else 503."""
    if ping(services(current_app).db):
        return jsonify(status="ok")
    return jsonify(status="unavailable", error="database does not answer"), 503
