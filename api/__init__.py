"""The HTTP API: a Flask app factory, one blueprint per resource."""

from flask import Flask

from pool_manager.settings import get_settings, load_settings

from . import auth, completions, errors, health, index, jobs, metrics, openapi, pools, sessions, ui
from .services import Services


def create_app(test_config: dict | None = None) -> Flask:
    """`test_config` overrides settings (tests); otherwise GREENROOM_* and the TOML file."""
    settings = load_settings(**test_config) if test_config else get_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    Services.init_app(app, settings)
    errors.init_app(app)
    auth.init_app(app)
    for module in (index, health, metrics, openapi, jobs, completions, sessions, pools):
        app.register_blueprint(module.bp)
    ui.init_app(app)
    return app
