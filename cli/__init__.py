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

from . import bench, chat, pool, programs, up


@click.group()
def main() -> None:
    """greenroom: booted AI model servers waiting for every chat."""


for command in (programs.api, programs.worker, programs.beat, programs.flower, up.up, chat.chat, pool.pool,
                bench.bench):
    main.add_command(command)


def run() -> None:
    try:
        main(standalone_mode=True)
    except GreenroomError as exc:
        click.echo(f"greenroom: {exc}", err=True)
        sys.exit(2)
    except redis.ConnectionError as exc:
        click.echo(f"greenroom: cannot reach Redis: {exc}", err=True)
        sys.exit(2)
