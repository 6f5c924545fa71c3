"""What the API talks to: Redis (jobs, pool state) and the broker (to send tasks by name).
It holds no runtime: containers are the workers' business."""

from dataclasses import dataclass

from celery import Celery
from flask import Flask, current_app
from redis import Redis

from pool_manager.jobs import JobStore
from pool_manager.overview import PoolOverview
from pool_manager.settings import Settings
from pool_manager.specs import PoolSpecs
from pool_manager.state import PoolState, connect_redis
from workers.config import make_celery

from .waits import OpenWaits


@dataclass
class Services:
    settings: Settings
    redis: Redis
    jobs: JobStore
    pools: PoolOverview  # reads only
    specs: PoolSpecs  # for scaling (PATCH /v1/pools/<name>)
    celery: Celery
    waits: OpenWaits  # long polls held open by this process
    broker_redis: Redis | None  # for queue depth, when the broker is Redis

    @classmethod
    def init_app(cls, app: Flask, settings: Settings) -> None:
        redis = connect_redis(settings.redis_url, health_check_interval=30)
        app.extensions["greenroom"] = cls(
            settings=settings,
            redis=redis,
            jobs=JobStore(redis, settings.deployment, result_ttl_s=settings.result_ttl_s),
            pools=PoolOverview(settings, redis),
            specs=PoolSpecs(settings, PoolState(redis, settings.deployment)),
            celery=make_celery(settings),
            waits=OpenWaits(settings.max_open_waits, settings.max_open_waits_per_tenant),
            broker_redis=connect_redis(settings.broker)
            if settings.broker.startswith(("redis://", "rediss://", "unix://")) else None,
        )


def services() -> Services:
    return current_app.extensions["greenroom"]
