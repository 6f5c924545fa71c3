"""The `greenroom` command: run the stack's programs, inspect and scale pools, chat.

Servers are launched as programs (gunicorn, celery), never imported: this package imports
neither Flask nor Celery. A command that just becomes another program replaces this
process (`os.execvpe`), so signals and exit codes reach that program directly; `up` and
`worker --queue all` run several programs under honcho.
"""

import sys

import click
import redis

from pool_manager.errors import GreenroomError

from . import bench, chat, clean, pool, programs, up


@click.group()
def main() -> None:
    """greenroom: booted AI model servers waiting for every chat."""


for command in (programs.api, programs.worker, programs.beat, programs.flower, up.up, chat.chat, pool.pool,
                bench.bench, clean.clean):
    main.add_command(command)


def run() -> None:
    try:
        main(standalone_mode=True)
    except GreenroomError as exc:
        click.echo(f"greenroom: {exc}", err=True)
        sys.exit(2)
    except redis.ConnectionError as exc:
        click.echo(f"greenroom: {_redis_problem(exc)}", err=True)
        sys.exit(2)


def _redis_problem(exc: redis.ConnectionError) -> str:
    if isinstance(exc, redis.AuthenticationError) or "AUTH" in str(exc):
        return ("Redis refused us: it asks for a password. Put it in GREENROOM_REDIS_URL "
                "(redis://:<password>@host:port/0), or run from the folder `greenroom up` ran in "
                "(it saved the password in .greenroom/secrets.env)")
    return f"cannot reach Redis: {exc}"
