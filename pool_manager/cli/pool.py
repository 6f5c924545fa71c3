"""`greenroom pool status` and `greenroom pool scale`."""

import dataclasses
import json

import click

from ..manager import PoolManager
from ..settings import get_settings


def _manager() -> PoolManager:
    return PoolManager(get_settings())


@click.group()
def pool() -> None:
    """Inspect and scale pools."""


@pool.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pool, in a list.")
def pool_status(as_json: bool) -> None:
    """Each pool's target and its containers by state."""
    manager = _manager()
    rows = [dataclasses.asdict(manager.status(name)) for name in manager.settings.pools]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    columns = ("name", "runtime", "target_idle", "max_total", "idle", "warming", "assigned", "failed", "degraded")
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    for line in [dict(zip(columns, columns)), *rows]:
        click.echo("  ".join(str(line[c]).ljust(w) for c, w in zip(columns, widths)).rstrip())


@pool.command("scale")
@click.argument("name")
@click.option("--target-idle", type=click.IntRange(min=0))
@click.option("--max-total", type=click.IntRange(min=1))
def pool_scale(name: str, target_idle: int | None, max_total: int | None) -> None:
    """Change a pool's target_idle or max_total at run time."""
    values = {k: v for k, v in {"target_idle": target_idle, "max_total": max_total}.items() if v is not None}
    if not values:
        raise click.UsageError("give --target-idle and/or --max-total")
    manager = _manager()
    spec = manager.scale(name, **values)
    manager.reconcile(name)
    click.echo(f"{name}: target_idle={spec.target_idle} max_total={spec.max_total}")
