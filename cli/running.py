"""Whether a stack is already running, seen before `up` starts anything: a lock in its
home folder (held while `up` runs; the kernel drops it when `up` dies), and the ports the
Procfile's API and Flower would listen on."""

import fcntl
import os
import socket
from pathlib import Path

import click

from pool_manager.settings import Settings

from .programs import _url

LOCK_FILE = "up.lock"
# Procfile commands that listen, and the setting that says where.
LISTENERS = {"greenroom api": ("api_host", "api_port"), "greenroom flower": ("flower_host", "flower_port")}


def hold_lock(home: Path, settings: Settings):
    """The lock, held until this process ends; or a one-line refusal if another `up` holds it."""
    handle = open(home / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        raise click.ClickException(f"greenroom is already running from this folder (pid {pid}, API "
                                   f"{_url(settings.api_host, settings.api_port)}): use it, or stop it first")
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def refuse_taken_ports(commands: dict[str, str], settings: Settings) -> None:
    for command in commands.values():
        for program, (host_setting, port_setting) in LISTENERS.items():
            host, port = getattr(settings, host_setting), getattr(settings, port_setting)
            if command.strip().startswith(program) and _taken(host, port):
                raise click.ClickException(
                    f"{_url(host, port)} is taken (another greenroom running? `{program}` would listen there): "
                    f"use it, stop it, or set GREENROOM_{port_setting.upper()}")


def _taken(host: str, port: int) -> bool:
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        with socket.create_connection((shown, port), timeout=1):
            return True
    except OSError:
        return False
