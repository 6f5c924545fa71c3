"""/v1/pools: each pool's target and containers by state; admins scale at run time."""

import dataclasses

from flask import Blueprint

from pool_manager.errors import ConfigError, UnknownPool
from workers.names import POOL_QUEUE, RECONCILE_TASK

from .auth import require_admin
from .body import json_object
from .errors import ApiError
from .services import services

bp = Blueprint("pools", __name__, url_prefix="/v1/pools")
SCALABLE = {"target_idle", "max_total"}


@bp.get("")
def index():
    svc = services()
    return {"pools": [dataclasses.asdict(svc.pools.status(name)) for name in svc.settings.pools]}


@bp.get("/<name>")
def read(name: str):
    return dataclasses.asdict(pool_status(name))


@bp.patch("/<name>")
def scale(name: str):
    require_admin()
    pool_status(name)  # 404 first
    body = json_object()
    for field, value in body.items():
        if field not in SCALABLE:
            raise ApiError(422, "invalid_request", f"{field}: only {', '.join(sorted(SCALABLE))} can change",
                           field=field)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ApiError(422, "invalid_request", f"{field}: must be an integer", field=field)
    if not body:
        raise ApiError(422, "invalid_request", "body: give target_idle and/or max_total", field="body")
    try:
        services().pools.scale(name, **body)
    except ConfigError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc
    services().celery.send_task(RECONCILE_TASK, args=[name], queue=POOL_QUEUE, ignore_result=True)
    return dataclasses.asdict(pool_status(name))


def pool_status(name: str):
    try:
        return services().pools.status(name)
    except UnknownPool:
        raise ApiError(404, "unknown_model", f"no pool named {name!r}") from None
