"""The Flask application factory: webhooks, API, dashboard and simulator in one WSGI app."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Flask, jsonify
from sqlalchemy.engine import Engine as DbEngine
from werkzeug.exceptions import HTTPException

import handlers  # noqa: F401  (registers every command and flow)
from bot.config import Config, load_config
from bot.engine import Engine
from storage.db import make_engine

log = logging.getLogger(__name__)


@dataclass
class Services:
    """What the web layer needs, created once per process."""

    config: Config
    db: DbEngine
    engine: Engine

    def clock(self) -> datetime:
        """Return the current instant (the engine's clock: tests move it)."""
        return self.engine.clock()


def services(app: Flask) -> Services:
    """Return the app's services."""
    svc: Services = app.extensions["desmigratif"]
    return svc


def create_app(config: Config | None = None, *, db: DbEngine | None = None,
               engine: Engine | None = None) -> Flask:
    """Build the WSGI application for a configuration."""
    config = config or load_config()
    db = db or make_engine(config.database.url, echo=config.database.echo)
    engine = engine or Engine(db, config)
    app = Flask(__name__, template_folder="web/templates", static_folder="web/static")
    app.config["SECRET_KEY"] = config.server.secret_key or None
    from bot.web import api, dashboard, health, simulator, webhooks

    app.config["MAX_CONTENT_LENGTH"] = webhooks.MAX_BODY  # no platform sends more than this
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["desmigratif"] = Services(config=config, db=db, engine=engine)
    # The platforms' webhooks are answered in front of Flask (see bot/web/webhooks.py).
    webhooks.install(app)
    if config.server.behind_proxy:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(dashboard.bp)
    if config.server.simulator:
        app.register_blueprint(simulator.bp)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        # Every client error is a short JSON reason, never an HTML page or a traceback.
        return jsonify(error=exc.description or exc.name), exc.code or 500

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unhandled error")
        return jsonify(error="internal error"), 500

    return app
