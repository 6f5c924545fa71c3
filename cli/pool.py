"""`greenroom pool status`, `greenroom pool scale` and `greenroom pool rollout`."""

import json

import click

from pool_manager.overview import PoolOverview
from pool_manager.schemas import PoolStatus
from pool_manager.settings import get_settings
from pool_manager.specs import PoolSpecs
from pool_manager.state import PoolState, connect_redis
from workers.names import POOL_QUEUE, RECONCILE_TASK

from .secretfile import with_saved_redis_password

COLUMNS = ("name", "runtime", "target_idle", "source", "max_total", "idle", "warming", "assigned", "old", "failed",
           "degraded", "engines")


class IdleTarget(click.ParamType):
    """A number of idle containers, or auto."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if value == "auto":
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
        self.fail(f"{value!r} is neither a whole number nor auto", param, ctx)


@click.group()
def pool() -> None:
    """Inspect, scale and roll pools."""


@pool.command("status")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pool, in a list.")
def pool_status(name: str | None, as_json: bool) -> None:
    """Each pool's target (and where it comes from), its containers by state, old ones of
    a rollout under way; NAME: that pool only."""
    settings = with_saved_redis_password(get_settings())
    overview = PoolOverview(settings, connect_redis(settings.redis_url))
    statuses = [overview.status(pool_name) for pool_name in ([name] if name else overview.pools)]
    if as_json:
        click.echo(json.dumps([s.model_dump() for s in statuses], indent=2))
        return
    rows = [_row(s) for s in statuses]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS]
    for line in [dict(zip(COLUMNS, COLUMNS)), *rows]:
        click.echo("  ".join(str(line[c]).ljust(w) for c, w in zip(COLUMNS, widths)).rstrip())
    click.echo()
    for status in statuses:
        click.echo(f"{status.name}: target {status.target_idle} idle: {status.target.why}")
        if status.rollout != "none":
            click.echo(f"{status.name}: {_rollout(status)}")


def _row(status: PoolStatus) -> dict:
    old = status.old.warming + status.old.idle + status.old.assigned
    # per engine: idle/warming/assigned, and "!" where the engine is not healthy
    engines = ",".join(f"{e.name}={e.idle}/{e.warming}/{e.assigned}{'' if e.healthy else '!'}" for e in status.engines)
    return status.model_dump() | {"source": status.target.source, "old": old, "engines": engines}


def _rollout(status: PoolStatus) -> str:
    old = status.old
    fresh = status.idle + status.warming + status.assigned - old.idle - old.warming - old.assigned
    said = (f"rolling out spec {status.spec_hash}: {fresh} new, old left: {old.idle} idle, {old.warming} warming, "
            f"{old.assigned} assigned (these keep their sessions)")
    if status.rollout == "stopped":
        said += "; stopped: the new spec's boots fail (degraded), the old containers keep serving"
    return said


@pool.command("scale")
@click.argument("name")
@click.option("--target-idle", type=IdleTarget(), help="Idle containers to keep: a number, or auto.")
@click.option("--max-total", type=click.IntRange(min=1))
@click.option("--min-idle", type=click.IntRange(min=0), help="auto: never fewer idle.")
@click.option("--max-idle", type=click.IntRange(min=0), help="auto: never more idle.")
@click.option("--reset", is_flag=True, help="Drop every run-time setting: the configuration holds again.")
def pool_scale(name: str, target_idle, max_total: int | None, min_idle: int | None, max_idle: int | None,
               reset: bool) -> None:
    """Change a pool's scale at run time (it wins over the configuration, also after a
    restart, until --reset drops it); the maintenance worker's next reconcile (asked for
    at once) starts or retires containers to match."""
    values = {k: v for k, v in {"target_idle": target_idle, "max_total": max_total, "min_idle": min_idle,
                                "max_idle": max_idle}.items() if v is not None}
    if reset and values:
        raise click.UsageError("--reset drops every run-time setting: give it alone")
    if not values and not reset:
        raise click.UsageError("give --target-idle, --max-total, --min-idle, --max-idle, or --reset")
    settings = with_saved_redis_password(get_settings())
    specs = PoolSpecs(settings, PoolState(connect_redis(settings.redis_url), settings.deployment))
    spec = specs.reset(name) if reset else specs.scale(name, **values)
    _reconcile(settings, name)
    click.echo(f"{name}: target_idle={spec.target_idle} max_total={spec.max_total}"
               + (f" min_idle={spec.min_idle} max_idle={spec.max_idle}" if spec.target_idle == "auto" else "")
               + (" (as configured)" if reset else ""))


@pool.command("rollout")
@click.argument("name")
def pool_rollout(name: str) -> None:
    """Replace the pool's containers with new ones of the same spec (after rebuilding its
    image under the same tag, say), as a change of its spec would: idle ones as new ones
    become ready (the idle count never drops below the target), assigned ones once their
    sessions end. `greenroom pool status` shows the old ones left."""
    settings = with_saved_redis_password(get_settings())
    specs = PoolSpecs(settings, PoolState(connect_redis(settings.redis_url), settings.deployment))
    spec_hash = specs.rollout(name)
    _reconcile(settings, name)
    click.echo(f"{name}: rolling out to spec {spec_hash}")


def _reconcile(settings, name: str) -> None:
    from workers.config import make_celery  # Celery only for the commands that change a pool

    make_celery(settings).send_task(RECONCILE_TASK, args=[name], queue=POOL_QUEUE, ignore_result=True,
                                    expires=settings.reconcile_interval_s * 4)
