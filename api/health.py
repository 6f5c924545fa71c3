"""Liveness and readiness, public."""

from flask import Blueprint

from .services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    svc = services()
    checks = {"redis": _redis_ok(svc), "broker": _broker_ok(svc)}
    ready = all(checks.values())
    return {"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503


def _redis_ok(svc) -> bool:
    try:
        return bool(svc.redis.ping())
    except Exception:
        return False


def _broker_ok(svc) -> bool:
    try:
        with svc.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        return False
