"""`greenroom up`: the whole stack from the Procfile under honcho, a local Redis when
needed, and generated credentials kept in HOME/secrets.env."""

import hashlib
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import click

from pool_manager.settings import Settings, get_settings

from .programs import _run_together, _url

HOME = Path(".greenroom")  # `up`'s own state, in the directory it runs from
SECRETS_FILE = "secrets.env"
PROCFILE = Path(__file__).resolve().parents[1] / "Procfile"


@click.command()
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
