"""Bearer tokens, each mapped to a tenant. Tokens are kept only as SHA-256 digests, and a
tenant sees only its own jobs and sessions. Health, readiness, the OpenAPI document
and the index (GET /) are public."""

import hashlib

from flask import Flask, g, request

from pool_manager.settings import Settings

from .errors import ApiError
from .services import services

PUBLIC_ENDPOINTS = {"index.index", "health.healthz", "health.readyz", "metrics.metrics", "openapi.document", "static"}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_table(settings: Settings) -> dict[str, str]:
    """digest -> tenant, from plain tokens or "sha256:<hex>" entries."""
    table = {}
    for tenant, secret in settings.api_keys.items():
        value = secret.get_secret_value()
        table[value.removeprefix("sha256:") if value.startswith("sha256:") else digest(value)] = tenant
    return table


def init_app(app: Flask) -> None:
    app.extensions["greenroom_tokens"] = token_table(services_settings(app))

    @app.before_request
    def _authenticate():
        if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
            return  # None: no such route, which answers 404 without telling more
        if request.blueprint == "ui":
            return  # the pool page signs in by bearer token or its own session cookie (api/ui.py)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        tenant = app.extensions["greenroom_tokens"].get(digest(token.strip())) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise ApiError(401, "unauthorized", "a valid bearer token is required")
        g.tenant = tenant


def services_settings(app: Flask) -> Settings:
    return app.extensions["greenroom"].settings


def tenant() -> str:
    return g.tenant


def is_admin() -> bool:
    return g.tenant in services().settings.admin_tenants


def require_admin() -> None:
    if not is_admin():
        raise ApiError(403, "forbidden", "this needs an admin token")


def visible(owner: str | None) -> bool:
    """May the caller see a record owned by `owner`? (Others' records read as absent.)"""
    return owner is not None and (owner == g.tenant or is_admin())
