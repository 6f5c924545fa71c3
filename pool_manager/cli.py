"""The `greenroom` command: run the stack's programs, inspect and scale pools, chat.

Servers are launched as programs (gunicorn, celery), never imported: this module imports
neither Flask nor Celery. A command that just becomes another program replaces this
process (`os.execvpe`), so signals and exit codes reach that program directly; `up` and
`worker --queue all` run several programs under honcho.
"""

import dataclasses
import hashlib
import ipaddress
import itertools
import json
import math
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import click
import httpx
import redis

from .errors import GreenroomError
from .jobs import FINAL
from .manager import PoolManager
from .settings import Settings, get_settings

CELERY_APP = "workers.app"
API_APP = "api:create_app()"
# Public queue names (workers/names.py), repeated because pool_manager imports no workers code.
QUEUES = {"chat": "greenroom.chat", "pool": "greenroom.pool"}
POOL_CONCURRENCY = 4  # maintenance: reconcile passes, session closes
HOME = Path(".greenroom")  # `up`'s own state, in the directory it runs from
SECRETS_FILE = "secrets.env"
PROCFILE = Path(__file__).resolve().parents[1] / "Procfile"
DEFAULT_API_URL = "http://127.0.0.1:8080"
POLL_WAIT_S = 30  # each long poll of GET /v1/jobs/<id>?wait=N
SESSION_GONE = ("session_closed", "container_lost", "container_timeout")


@click.group()
def main() -> None:
    """greenroom: booted AI model servers waiting for every chat."""


# ---------------------------------------------------------------- launching programs

def _program(module: str, *args: str) -> list[str]:
    """argv for a Python program of this environment (the venv's, whatever PATH says)."""
    return [sys.executable, "-m", module, *args]


def _celery(*args: str) -> list[str]:
    return _program("celery", "-A", CELERY_APP, *args)


def _become(argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
    """Replace this process with argv."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, os.environ if env is None else env)


def _run_together(commands: dict[str, str], env: dict[str, str]) -> int:
    """Run shell commands side by side under honcho, prefixing their output; when one
    ends, or on Ctrl-C/SIGTERM, all are stopped. Returns the exit code."""
    from honcho.manager import Manager

    manager = Manager()
    for name, command in commands.items():
        manager.add_process(name, command, env=env)
    manager.loop()
    return manager.returncode or 0


def _state_dir() -> Path:
    """Where processes keep local state: the process runtime's records, beat's schedule."""
    return Path(os.environ.get("GREENROOM_STATE_DIR") or Path(tempfile.gettempdir()) / "greenroom")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url(host: str, port: int) -> str:
    """A URL to reach a server bound to host (a wildcard bind is reached on loopback)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{_host_port(shown, port)}"


# ---------------------------------------------------------------- api, worker, beat, flower

@main.command()
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Processes.")
@click.option("--threads", default=32, show_default=True, type=click.IntRange(min=1),
              help="Threads per process; each long poll holds one.")
@click.option("--access-log", is_flag=True, help="Log request lines to stdout (off by default).")
def api(workers: int, threads: int, access_log: bool) -> None:
    """The HTTP API under gunicorn, on api_host:api_port."""
    _become(_api_argv(get_settings(), workers, threads, access_log))


def _api_argv(settings: Settings, workers: int, threads: int, access_log: bool) -> list[str]:
    argv = _program(
        "gunicorn", "--bind", _host_port(settings.api_host, settings.api_port),
        "--worker-class", "gthread", "--workers", str(workers), "--threads", str(threads),
        "--graceful-timeout", str(math.ceil(settings.max_wait_s) + 5),  # let long polls finish
        "--no-control-socket",
    )
    if access_log:
        argv += ["--access-logfile", "-"]
    return [*argv, API_APP]


@main.command()
@click.option("--queue", type=click.Choice(["chat", "pool", "all"]), default="all", show_default=True,
              help="chat: relay chat jobs; pool: maintenance; all: both, as two workers.")
@click.option("--name", help="Node name (default chat@%h / pool@%h); one queue only.")
@click.option("--loglevel", default="info", show_default=True)
def worker(queue: str, name: str | None, loglevel: str) -> None:
    """A Celery worker (threads pool) for one queue, or one worker per queue.

    Maintenance runs in a worker of its own so that it never waits behind chat jobs that
    are waiting for a container: `--queue all` starts two workers, not one."""
    settings = get_settings()
    if queue != "all":
        _become(_worker_argv(settings, queue, name, loglevel))
    if name:
        raise click.UsageError("--name needs --queue chat or --queue pool")
    commands = {q: shlex.join(_worker_argv(settings, q, None, loglevel)) for q in QUEUES}
    sys.exit(_run_together(commands, dict(os.environ)))


def _worker_argv(settings: Settings, queue: str, name: str | None, loglevel: str) -> list[str]:
    concurrency = settings.chat_concurrency if queue == "chat" else POOL_CONCURRENCY
    return _celery(
        "worker", "-Q", QUEUES[queue], "--pool", "threads", "-c", str(concurrency),
        "-n", name or f"{queue}@%h", "-E", "--without-gossip", "--without-mingle", "-l", loglevel,
    )


@main.command()
@click.option("--loglevel", default="info", show_default=True)
def beat(loglevel: str) -> None:
    """Celery beat: the periodic reconcile of every pool (run exactly one)."""
    settings = get_settings()
    folder = _state_dir() / "beat"
    folder.mkdir(parents=True, exist_ok=True)
    schedule = folder / f"{settings.deployment}-schedule"
    _become(_celery("beat", "-s", str(schedule), "--pidfile=", "-l", loglevel))


@main.command()
@click.option("--read-only/--read-write", default=True, show_default=True,
              help="Read-only hides and refuses revoke, terminate, shutdown, pool and rate-limit changes.")
def flower(read_only: bool) -> None:
    """Flower, behind basic auth (flower_user / flower_password), on flower_host:flower_port.

    The credentials reach Flower through FLOWER_BASIC_AUTH in its environment, so they
    never show in `ps`."""
    settings = get_settings()
    argv = _celery("flower", f"--address={settings.flower_host}", f"--port={settings.flower_port}")
    _become(argv, os.environ | _flower_env(settings, read_only))


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


# ---------------------------------------------------------------- up

@main.command()
@click.option("--procfile", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Default: the Procfile of this checkout.")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=HOME, show_default=True,
              help="up's own state: generated secrets, Redis's data, process servers' records.")
def up(procfile: Path | None, home: Path) -> None:
    """Everything in the Procfile under honcho: the API, a chat worker, a maintenance
    worker, beat and Flower; and Redis too, when the configured one is local and down.

    Without configured API keys, an admin token and a Flower password are made once and
    kept in HOME/secrets.env (mode 0600)."""
    settings = get_settings()
    commands = _procfile_commands(procfile or PROCFILE)
    home = home.resolve()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    generated = _generated_secrets(settings, home / SECRETS_FILE)
    env = _stack_env(settings, home, generated)
    with _local_redis(settings.redis_url, home / "redis"):
        _print_welcome(settings, home / SECRETS_FILE, generated)
        code = _run_together(commands, env)
    sys.exit(code)


def _procfile_commands(path: Path) -> dict[str, str]:
    from honcho.environ import parse_procfile

    if not path.is_file():
        raise click.ClickException(f"no Procfile at {path} (pass --procfile)")
    commands = dict(parse_procfile(path.read_text()).processes)
    if not commands:
        raise click.ClickException(f"{path} names no processes")
    return commands


def _stack_env(settings: Settings, home: Path, generated: dict[str, str]) -> dict[str, str]:
    """The children's environment: this one, the venv first on PATH (the Procfile says
    `greenroom ...`), the generated credentials (the API gets the token's digest only)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    env.setdefault("GREENROOM_STATE_DIR", str(home / "state"))
    env.setdefault("PYTHONUNBUFFERED", "1")  # log lines reach honcho as they happen
    if token := generated.get("GREENROOM_TOKEN"):
        digest = hashlib.sha256(token.encode()).hexdigest()
        env["GREENROOM_API_KEYS"] = json.dumps({_admin_tenant(settings): f"sha256:{digest}"})
    if password := generated.get("GREENROOM_FLOWER_PASSWORD"):
        env["GREENROOM_FLOWER_PASSWORD"] = password
    return env


def _admin_tenant(settings: Settings) -> str:
    return settings.admin_tenants[0] if settings.admin_tenants else "admin"


def _generated_secrets(settings: Settings, path: Path) -> dict[str, str]:
    """The credentials settings lack, from the secrets file or made now and saved there."""
    wanted = []
    if not settings.api_keys:
        wanted.append("GREENROOM_TOKEN")
    if settings.flower_password is None:
        wanted.append("GREENROOM_FLOWER_PASSWORD")
    saved = _read_env_file(path)
    values = {name: saved.get(name) or secrets.token_urlsafe(32) for name in wanted}
    if any(saved.get(name) != value for name, value in values.items()):
        _write_env_file(path, saved | values)
    return values


def _read_env_file(path: Path) -> dict[str, str]:
    """NAME=value lines (shell-quoted values allowed); tightens a too-open mode to 0600."""
    if not path.is_file():
        return {}
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name and not name.startswith("#"):
            try:
                values[name.strip()] = " ".join(shlex.split(value))
            except ValueError:
                continue  # an unbalanced quote: treat the line as absent
    return values


def _write_env_file(path: Path, values: dict[str, str]) -> None:
    """Write atomically, created 0600 (never readable by others, not even for a moment)."""
    lines = ["# greenroom up: generated credentials. Keep private; delete this file to rotate them.",
             "# Load into a shell with: set -a; . ./.greenroom/secrets.env; set +a",
             *(f"{name}={shlex.quote(value)}" for name, value in values.items())]
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(temporary, path)


@contextmanager
def _local_redis(url: str, data_dir: Path):
    """Start redis-server (append-only file in data_dir, so jobs survive a restart) for
    the lifetime of the block, when url points at this machine and nothing answers there."""
    address = _loopback_address(url)
    if address is None or _answers(*address):
        yield
        return
    server = _start_redis(url, *address, data_dir)
    try:
        yield
    finally:
        _stop(server)


def _loopback_address(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        return None
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return (host, parts.port or 6379) if loopback else None


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _start_redis(url: str, host: str, port: int, data_dir: Path) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        raise click.ClickException(
            f"nothing answers at {host}:{port} and redis-server is not installed: install it "
            "(apt-get install redis-server) or point GREENROOM_REDIS_URL at a running Redis")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = data_dir / "redis.conf"
    _write_redis_config(config, url, host, port, data_dir)
    server = subprocess.Popen([binary, str(config)], stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60  # a long append-only file takes a while to load
    while not _answers(host, port):
        if server.poll() is not None or time.monotonic() > deadline:
            _stop(server)
            raise click.ClickException(f"redis-server did not start; see {data_dir / 'redis.log'}")
        time.sleep(0.1)
    click.echo(f"redis: started on {host}:{port}, data in {data_dir}", err=True)
    return server


def _write_redis_config(config: Path, url: str, host: str, port: int, data_dir: Path) -> None:
    """A config file rather than arguments, so a password in the URL never shows in `ps`."""
    bind = "127.0.0.1 -::1" if host == "localhost" else host
    lines = [f"bind {bind}", f"port {port}", f'dir "{data_dir}"', f'logfile "{data_dir / "redis.log"}"',
             "appendonly yes", 'save ""', "protected-mode yes", "daemonize no"]
    if password := urlsplit(url).password:
        lines.append(f'requirepass "{password}"')
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")


def _stop(process: subprocess.Popen, timeout: float = 30) -> None:
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _print_welcome(settings: Settings, secrets_path: Path, generated: dict[str, str]) -> None:
    api_url = _url(settings.api_host, settings.api_port)
    model = next(iter(settings.pools), "chatbot")
    if "GREENROOM_TOKEN" in generated:
        token_note = f"tenant {_admin_tenant(settings)!r}: GREENROOM_TOKEN in {secrets_path}"
        token = f'$(. {shlex.quote(str(secrets_path))} && echo "$GREENROOM_TOKEN")'
    else:
        token_note = "one of your configured api_keys (export it as GREENROOM_TOKEN)"
        token = "$GREENROOM_TOKEN"
    password_note = (f"password: GREENROOM_FLOWER_PASSWORD in {secrets_path}"
                     if "GREENROOM_FLOWER_PASSWORD" in generated else "password: your flower_password")
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello! My name is Ada."}]})
    lines = [
        "greenroom is starting; Ctrl-C stops everything.",
        f"  API     {api_url}   (OpenAPI: {api_url}/openapi.json)",
        f"  Flower  {_url(settings.flower_host, settings.flower_port)}   "
        f"user {settings.flower_user!r}, {password_note}",
        f"  token   {token_note}",
        "Try it:",
        f'  curl -s {api_url}/v1/chat/completions -H "Authorization: Bearer {token}" '
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}",
        f"  {Path(sys.executable).parent / 'greenroom'} chat --model {model}",
        "",
    ]
    click.echo("\n".join(lines))


# ---------------------------------------------------------------- chat

class ApiClient:
    """The few calls `greenroom chat` makes; API errors become ClickExceptions."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=httpx.Timeout(15, read=POLL_WAIT_S + 15))

    def call(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise click.ClickException(f"cannot reach the API at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise click.ClickException(f"{method} {path}: {response.status_code} {_error_text(response)}")
        return response.json() if response.content else {}

    def ask(self, model: str, text: str, session_id: str | None, spinner: "Spinner") -> dict:
        """Submit one user message and long-poll the job to its end."""
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        if session_id:
            body["session_id"] = session_id
        job = self.call("POST", "/v1/jobs", json=body)
        try:
            while job["status"] not in FINAL:
                spinner.label = _progress(job)
                job = self.call("GET", f"/v1/jobs/{job['id']}", params={"wait": POLL_WAIT_S})
        except KeyboardInterrupt:
            self.cancel(job["id"])
            raise
        return job

    def cancel(self, job_id: str) -> None:
        try:
            self.http.delete(f"/v1/jobs/{job_id}", timeout=5)
        except httpx.HTTPError:
            pass

    def close_session(self, session_id: str) -> None:
        self.call("DELETE", f"/v1/sessions/{session_id}")


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


def _progress(job: dict) -> str:
    if job["status"] == "waiting_for_container" and "position" in job:
        return f"waiting for a container (position {job['position']})"
    return job["status"].replace("_", " ")


class Spinner:
    """A one-line spinner with a label on stderr, only when stderr is a terminal."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.label = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def __enter__(self) -> "Spinner":
        if self.stream.isatty():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _spin(self) -> None:
        for frame in itertools.cycle("|/-\\"):
            self.stream.write(f"\r{frame} {self.label}\x1b[K")
            self.stream.flush()
            if self._stop.wait(0.1):
                break
        self.stream.write("\r\x1b[K")
        self.stream.flush()


def _reply(job: dict) -> str:
    """The assistant's text, or a ClickException saying why there is none."""
    if job["status"] == "succeeded":
        return job["result"]["choices"][0]["message"]["content"]
    error = job.get("error") or {}
    detail = ": ".join(str(error[k]) for k in ("code", "message") if error.get(k))
    raise click.ClickException(f"job {job['id']} {job['status']}" + (f": {detail}" if detail else ""))


def _default_token() -> str | None:
    """GREENROOM_TOKEN, else the admin token `greenroom up` saved in this directory."""
    return os.environ.get("GREENROOM_TOKEN") or _read_env_file(HOME / SECRETS_FILE).get("GREENROOM_TOKEN")


@main.command()
@click.argument("message", required=False)
@click.option("--model", default="chatbot", show_default=True, help="The pool to talk to.")
@click.option("--session", "session_id", help="Continue this session (default: a new one).")
@click.option("--api-url", envvar="GREENROOM_API_URL", default=DEFAULT_API_URL, show_default=True)
@click.option("--token", envvar="GREENROOM_TOKEN",
              help="Bearer token [env GREENROOM_TOKEN; default: the one `up` saved in .greenroom/].")
def chat(message: str | None, model: str, session_id: str | None, api_url: str, token: str | None) -> None:
    """Send MESSAGE and print the reply; without MESSAGE, converse until /quit."""
    token = token or _default_token()
    if not token:
        raise click.ClickException("no token: pass --token or set GREENROOM_TOKEN")
    client = ApiClient(api_url, token)
    if message is None:
        _converse(client, model, session_id)
        return
    with Spinner() as spinner:
        job = client.ask(model, message, session_id, spinner)
    click.echo(_reply(job))
    if not session_id and job.get("session_id"):
        click.echo(f"(session {job['session_id']}: continue with --session {job['session_id']})", err=True)


def _converse(client: ApiClient, model: str, session_id: str | None) -> None:
    """One session, one line at a time; closes the session it started when it ends."""
    started = None
    click.echo(f"Talking to {model!r}; /quit (or Ctrl-D) ends the conversation.", err=True)
    try:
        while (line := _read_line()) is not None:
            with Spinner() as spinner:
                job = client.ask(model, line, session_id, spinner)
            if session_id is None and job.get("session_id"):
                session_id = started = job["session_id"]  # a session of our own: closed at the end
            _show_turn(model, job)
            if job["status"] != "succeeded" and (job.get("error") or {}).get("code") in SESSION_GONE:
                click.echo("(the session ended; the next message starts a new one)", err=True)
                session_id = started = None
    except KeyboardInterrupt:
        click.echo("", err=True)
    finally:
        if started:
            client.close_session(started)


def _read_line() -> str | None:
    """The next non-empty line, or None at /quit or end of input."""
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return None
        if line == "/quit":
            return None
        if line:
            return line


def _show_turn(model: str, job: dict) -> None:
    try:
        click.echo(f"{model}> {_reply(job)}")
    except click.ClickException as exc:
        click.echo(f"error: {exc.message}", err=True)


# ---------------------------------------------------------------- pools

def _manager() -> PoolManager:
    return PoolManager(get_settings())


@main.group()
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
    columns = ("name", "runtime", "target_idle", "max_total", "idle", "warming", "assigned", "failed")
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


def run() -> None:
    try:
        main(standalone_mode=True)
    except GreenroomError as exc:
        click.echo(f"greenroom: {exc}", err=True)
        sys.exit(2)
    except redis.ConnectionError as exc:
        click.echo(f"greenroom: cannot reach Redis: {exc}", err=True)
        sys.exit(2)
