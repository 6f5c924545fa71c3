"""`greenroom pool status` and `greenroom pool scale`."""

import json

import click

from pool_manager.overview import PoolOverview
from pool_manager.settings import get_settings
from pool_manager.specs import PoolSpecs
from pool_manager.state import PoolState, connect_redis
from workers.names import POOL_QUEUE, RECONCILE_TASK

from .secretfile import with_saved_redis_password


@click.group()
def pool() -> None:
    """Inspect and scale pools."""


@pool.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pool, in a list.")
def pool_status(as_json: bool) -> None:
    """Each pool's target and its containers by state."""
    settings = with_saved_redis_password(get_settings())
    overview = PoolOverview(settings, connect_redis(settings.redis_url))
    rows = [overview.status(name).model_dump() for name in overview.pools]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:  # per engine: idle/warming/assigned, and "!" where the engine is not healthy
        row["engines"] = ",".join(f"{e['name']}={e['idle']}/{e['warming']}/{e['assigned']}{'' if e['healthy'] else '!'}"
                                  for e in row["engines"])
    _table(rows, ("name", "runtime", "target_idle", "max_total", "idle", "warming", "assigned", "failed", "degraded",
                  "engines"))


def _table(rows: list[dict], columns: tuple[str, ...]) -> None:
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    for line in [dict(zip(columns, columns)), *rows]:
        click.echo("  ".join(str(line[c]).ljust(w) for c, w in zip(columns, widths)).rstrip())


@pool.command("scale")
@click.argument("name")
@click.option("--target-idle", type=click.IntRange(min=0))
@click.option("--max-total", type=click.IntRange(min=1))
def pool_scale(name: str, target_idle: int | None, max_total: int | None) -> None:
    """Change a pool's target_idle or max_total at run time; the maintenance worker's next
    reconcile (asked for at once) starts or retires containers to match."""
    values = {k: v for k, v in {"target_idle": target_idle, "max_total": max_total}.items() if v is not None}
    if not values:
        raise click.UsageError("give --target-idle and/or --max-total")
    from workers.config import make_celery  # Celery only for this command

    settings = with_saved_redis_password(get_settings())
    spec = PoolSpecs(settings, PoolState(connect_redis(settings.redis_url), settings.deployment)).scale(name, **values)
    make_celery(settings).send_task(RECONCILE_TASK, args=[name], queue=POOL_QUEUE, ignore_result=True,
                                    expires=settings.reconcile_interval_s * 4)
    click.echo(f"{name}: target_idle={spec.target_idle} max_total={spec.max_total}")
