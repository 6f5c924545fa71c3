"""/v1/pools: each pool's target (and where it comes from) and containers by state;
admins scale at run time (PATCH, null drops a setting) and roll a pool's containers over
to new ones (POST .../rollout)."""

from flask import Blueprint

from pool_manager.errors import ConfigError, UnknownPool
from pool_manager.schemas import PoolChange, PoolStatus
from workers.names import POOL_QUEUE, RECONCILE_TASK

from .auth import require_admin
from .body import json_object
from .errors import ApiError
from .services import services

bp = Blueprint("pools", __name__, url_prefix="/v1/pools")


@bp.get("")
def index():
    svc = services()
    return {"pools": [svc.pools.status(name).model_dump() for name in svc.pools.pools]}


@bp.get("/<name>")
def read(name: str):
    return pool_status(name).model_dump()


@bp.patch("/<name>")
def scale(name: str):
    require_admin()
    pool_status(name)  # 404 first
    change = PoolChange.model_validate(json_object()).values()
    if not change:
        raise ApiError(422, "invalid_request", "body: give target_idle, max_total, min_idle and/or max_idle",
                       field="body")
    try:
        services().specs.scale(name, **change)
    except ConfigError as exc:
        raise ApiError(422, "invalid_request", str(exc), field=exc.field) from exc
    _reconcile(name)
    return pool_status(name).model_dump()


@bp.post("/<name>/rollout")
def rollout(name: str):
    """Replace the pool's containers with new ones (an image rebuilt under its tag, say):
    idle ones as new ones become ready, assigned ones once their sessions end."""
    require_admin()
    pool_status(name)  # 404 first
    services().specs.rollout(name)
    _reconcile(name)
    return pool_status(name).model_dump(), 202


def _reconcile(name: str) -> None:
    services().celery.send_task(RECONCILE_TASK, args=[name], queue=POOL_QUEUE, ignore_result=True)


def pool_status(name: str) -> PoolStatus:
    try:
        return services().pools.status(name)
    except UnknownPool:
        raise ApiError(404, "unknown_model", f"no pool named {name!r}") from None
