"""Liveness and readiness, public."""

from flask import Blueprint
from redis import Redis, RedisError
from redis.backoff import NoBackoff
from redis.retry import Retry

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
    """One try on a connection of its own: the API's client rides out an outage for about
    10 s (state.REDIS_RETRY), longer than any probe waits for an answer."""
    try:
        with Redis.from_url(svc.settings.redis_url, socket_connect_timeout=1, socket_timeout=1,
                            retry=Retry(NoBackoff(), 0)) as probe:
            return bool(probe.ping())
    except RedisError:
        return False


def _broker_ok(svc) -> bool:
    try:
        with svc.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        return False
