"""Commands that become a program of the stack: `api` (gunicorn), `worker`, `beat` and
`flower` (celery); and the helpers for launching programs that `up` shares."""

import os
import shlex
import signal
import sys
import threading
from typing import NoReturn

import click

from pool_manager.settings import Settings, get_settings
from pool_manager.statedir import private_state_dir
from workers.names import CHAT_QUEUE, POOL_QUEUE, engine_queue

CELERY_APP = "workers.app"
WORKER_CLASSES = {"gevent": "api.gunicorn_conf.GeventWorker", "gthread": "gthread"}
API_APP = "api:create_app()"
QUEUES = {"chat": CHAT_QUEUE, "pool": POOL_QUEUE}
POOL_CONCURRENCY = 4  # maintenance: reconcile passes, session closes


def _program(module: str, *args: str) -> list[str]:
    """argv for a Python program of this environment (the venv's, whatever PATH says)."""
    return [sys.executable, "-m", module, *args]


def _celery(*args: str, quiet: bool = False) -> list[str]:
    """quiet: without the start-up banners (celery -q)."""
    return _program("celery", "-A", CELERY_APP, *(["-q"] if quiet else []), *args)


VERBOSE_HELP = "Log every task received and finished, and every beat tick (default: what changed, one line each)."


def _verbose_env(verbose: bool) -> dict[str, str]:
    """The environment for a program of the stack: verbose reaches it as a setting."""
    return os.environ | ({"GREENROOM_VERBOSE": "1"} if verbose else {})


def _become(argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
    """Replace this process with argv."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, os.environ if env is None else env)


def _run_together(commands: dict[str, str], envs: dict[str, dict[str, str]]) -> int:
    """Run shell commands side by side under honcho, each with its environment, prefixing
    their output; when one ends, or on Ctrl-C/SIGTERM, all are stopped. Returns the exit code."""
    from honcho.manager import Manager

    class PatientManager(Manager):
        """honcho's Manager, except for a signal that comes before the loop has read every
        process's pid: honcho's handler raised KeyError('pid') then, and its processes
        ran on. The signal is sent again a moment later instead."""

        def terminate(self) -> None:
            if self._all_started():
                super().terminate()
            else:
                threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()

    manager = PatientManager()
    for name, command in commands.items():
        manager.add_process(name, command, env=envs[name])
    manager.loop()
    return manager.returncode or 0


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url(host: str, port: int) -> str:
    """A URL to reach a server bound to host (a wildcard bind is reached on loopback)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{_host_port(shown, port)}"


# ---------------------------------------------------------------- api, worker, beat, flower

@click.command()
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Processes.")
@click.option("--worker-class", type=click.Choice(list(WORKER_CLASSES)), default="gevent", show_default=True,
              help="gevent: a greenlet per open request (long polls and streams cost memory, not "
                   "threads); gthread: a thread per open request.")
@click.option("--threads", default=32, show_default=True, type=click.IntRange(min=1),
              help="gthread only: threads per process; each long poll holds one.")
@click.option("--access-log", is_flag=True, help="Log request lines to stdout (off by default).")
def api(workers: int, worker_class: str, threads: int, access_log: bool) -> None:
    """The HTTP API under gunicorn, on api_host:api_port."""
    _become(_api_argv(get_settings(), workers, worker_class, threads, access_log))


def _api_argv(settings: Settings, workers: int, worker_class: str, threads: int, access_log: bool) -> list[str]:
    argv = _program(
        "gunicorn", "--bind", _host_port(settings.api_host, settings.api_port),
        "--worker-class", WORKER_CLASSES[worker_class], "--workers", str(workers), "--threads", str(threads),
        "--worker-connections", str(settings.api_max_open_requests),
        "--keep-alive", "5",  # also how long a client may take to send a request's headers
        "--config", "python:api.gunicorn_conf",  # a stopping worker ends its long polls at once
        "--graceful-timeout", "10",
        "--no-control-socket",
    )
    if access_log:
        argv += ["--access-logfile", "-"]
    return [*argv, API_APP]


@click.command()
@click.option("--queue", type=click.Choice(["chat", "pool", "all"]), default="all", show_default=True,
              help="chat: relay chat jobs; pool: maintenance; all: both, as two workers.")
@click.option("--name", help="Node name (default chat@%h / pool@%h, pool-<engine>@%h); one queue only.")
@click.option("--engine", help="The Docker engine this pool worker drives, of [engines.<name>] (default: the "
                               "only one); it alone talks to that engine.")
@click.option("--loglevel", default="info", show_default=True)
@click.option("--verbose", is_flag=True, help=VERBOSE_HELP)
def worker(queue: str, name: str | None, engine: str | None, loglevel: str, verbose: bool) -> None:
    """A Celery worker (threads pool) for one queue, or one worker per queue.

    Maintenance runs in a worker of its own so that it never waits behind chat jobs that
    are waiting for a container: `--queue all` starts two workers, not one."""
    settings = get_settings()
    verbose = verbose or settings.verbose
    engine = _engine(settings, queue, engine)
    env = _verbose_env(verbose) | ({"GREENROOM_ENGINE": engine} if engine else {})
    if queue != "all":
        _become(_worker_argv(settings, queue, name, loglevel, verbose, engine), env)
    if name:
        raise click.UsageError("--name needs --queue chat or --queue pool")
    commands = {q: shlex.join(_worker_argv(settings, q, None, loglevel, verbose, engine)) for q in QUEUES}
    envs = {"pool": env, "chat": {k: v for k, v in env.items() if k != "GREENROOM_ENGINE"}}  # chat drives none
    sys.exit(_run_together(commands, envs))


def _engine(settings: Settings, queue: str, engine: str | None) -> str | None:
    """The engine a pool worker drives: the one named, else the only one configured."""
    engines = settings.engine_specs
    if engine and engine not in engines:
        raise click.UsageError(f"--engine {engine}: not configured; known: {', '.join(engines)}")
    if queue != "chat" and not engine and len(engines) > 1:
        raise click.UsageError(f"several engines are configured ({', '.join(engines)}): a pool worker needs --engine")
    return engine or (settings.engine if queue != "chat" else None)


def _worker_argv(settings: Settings, queue: str, name: str | None, loglevel: str, verbose: bool,
                 engine: str | None = None) -> list[str]:
    concurrency = settings.chat_concurrency if queue == "chat" else POOL_CONCURRENCY
    queues = QUEUES[queue]
    engine = engine or settings.own_engine
    if queue == "pool" and engine:  # the shared maintenance queue, and this engine's own
        queues += f",{engine_queue(engine)}"
    default = f"pool-{engine}@%h" if queue == "pool" and len(settings.engine_specs) > 1 else f"{queue}@%h"
    return _celery(
        "worker", "-Q", queues, "--pool", "threads", "-c", str(concurrency),
        "-n", name or default, "-E", "--without-gossip", "--without-mingle", "-l", loglevel,
        quiet=not verbose,
    )


@click.command()
@click.option("--loglevel", default="info", show_default=True)
@click.option("--verbose", is_flag=True, help=VERBOSE_HELP)
def beat(loglevel: str, verbose: bool) -> None:
    """Celery beat: the periodic reconcile of every pool (run exactly one)."""
    settings = get_settings()
    verbose = verbose or settings.verbose
    folder = private_state_dir(settings.state_dir) / "beat"
    folder.mkdir(mode=0o700, exist_ok=True)
    schedule = folder / f"{settings.deployment}-schedule"
    _become(_celery("beat", "-s", str(schedule), "--pidfile=", "-l", loglevel, quiet=not verbose),
            _verbose_env(verbose))


@click.command()
@click.option("--read-only/--read-write", default=True, show_default=True,
              help="Read-only hides and refuses revoke, terminate, shutdown, pool and rate-limit changes.")
@click.option("--verbose", is_flag=True, help="Also list the registered tasks at start.")
def flower(read_only: bool, verbose: bool) -> None:
    """Flower, behind basic auth (flower_user / flower_password), on flower_host:flower_port.

    The credentials reach Flower through FLOWER_BASIC_AUTH in its environment, so they
    never show in `ps`."""
    settings = get_settings()
    argv = _celery("flower", f"--address={settings.flower_host}", f"--port={settings.flower_port}")
    _become(argv, _verbose_env(verbose) | _flower_env(settings, read_only))


def _flower_env(settings: Settings, read_only: bool) -> dict[str, str]:
    if settings.flower_password is None:
        raise click.ClickException(
            "Flower needs a password: set GREENROOM_FLOWER_PASSWORD (or flower_password in the "
            "config file); `greenroom up` makes one for you")
    password = settings.flower_password.get_secret_value()
    user = settings.flower_user
    if not password or "," in password:
        raise click.ClickException("flower_password must be non-empty and contain no ',' (Flower splits on it)")
    if not user or ":" in user or "," in user:
        raise click.ClickException("flower_user must be non-empty and contain no ':' or ','")
    return {"FLOWER_BASIC_AUTH": f"{user}:{password}", "FLOWER_READ_ONLY": str(read_only).lower()}
