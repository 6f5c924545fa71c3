"""The Redis `greenroom up` runs when the configured one is on this machine and down:
redis-server with a password (in its config file, never on a command line), an
append-only file (so queued jobs survive a restart) and a memory cap that refuses
writes rather than dropping queued jobs. And a check that whatever Redis is used asks
for a password: model containers share this host's loopback."""

import ipaddress
import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import click
import redis

MAXMEMORY = "1gb"  # full: writes are refused (the API answers 503), nothing is evicted


def with_password(url: str, password: str) -> str:
    """url with password as its credentials (redis://:<password>@host:port/db)."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    netloc = f":{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def local_redis(url: str, data_dir: Path):
    """Start redis-server for the lifetime of the block when url points at this machine
    and nothing answers there."""
    address = _loopback_address(url)
    if address is None or _answers(*address):
        yield
        return
    server = _start(url, *address, data_dir)
    try:
        yield
    finally:
        _stop(server)


def require_password(url: str) -> None:
    """Refuse a Redis that answers commands without a password: any process or model
    container on its network could read every job and rewrite the pools."""
    parts = urlsplit(url)
    try:
        with redis.Redis(host=parts.hostname, port=parts.port or 6379, socket_connect_timeout=3,
                         socket_timeout=3) as anonymous:
            anonymous.ping()
    except redis.AuthenticationError:
        return
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc):
            return
        raise
    raise click.ClickException(
        f"Redis at {parts.hostname}:{parts.port or 6379} answers without a password. Give it one "
        "(requirepass in its config file) and put it in GREENROOM_REDIS_URL (redis://:<password>@host:port/0), "
        "or stop it and let `greenroom up` start its own")


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


def _start(url: str, host: str, port: int, data_dir: Path) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        raise click.ClickException(
            f"nothing answers at {host}:{port} and redis-server is not installed: install it "
            "(apt-get install redis-server) or point GREENROOM_REDIS_URL at a running Redis")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = data_dir / "redis.conf"
    _write_config(config, url, host, port, data_dir)
    server = subprocess.Popen([binary, str(config)], stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60  # a long append-only file takes a while to load
    while not _answers(host, port):
        if server.poll() is not None or time.monotonic() > deadline:
            _stop(server)
            raise click.ClickException(f"redis-server did not start; see {data_dir / 'redis.log'}")
        time.sleep(0.1)
    click.echo(f"redis: started on {host}:{port}, data in {data_dir}", err=True)
    return server


def _write_config(config: Path, url: str, host: str, port: int, data_dir: Path) -> None:
    bind = "127.0.0.1 -::1" if host == "localhost" else host
    lines = [f"bind {bind}", f"port {port}", f'dir "{data_dir}"', f'logfile "{data_dir / "redis.log"}"',
             "appendonly yes", 'save ""', "protected-mode yes", "daemonize no",
             f"maxmemory {MAXMEMORY}", "maxmemory-policy noeviction"]
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
