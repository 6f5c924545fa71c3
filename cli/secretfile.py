"""`greenroom up`'s generated credentials, kept in HOME/secrets.env (mode 0600) and reused
on the next run: an admin API token, a Flower password and a Redis password, each made
only when the settings lack it."""

import os
import secrets
import shlex
from pathlib import Path
from urllib.parse import urlsplit

from pool_manager.settings import Settings

HOME = Path(".greenroom")  # `up`'s own state, in the directory it runs from
SECRETS_FILE = "secrets.env"


def generated_secrets(settings: Settings, path: Path) -> dict[str, str]:
    """The credentials settings lack, from the secrets file or made now and saved there."""
    wanted = []
    if not settings.api_keys:
        wanted.append("GREENROOM_TOKEN")
    if settings.flower_password is None:
        wanted.append("GREENROOM_FLOWER_PASSWORD")
    if not urlsplit(settings.redis_url).password:
        wanted.append("GREENROOM_REDIS_PASSWORD")
    saved = read_env_file(path)
    values = {name: saved.get(name) or secrets.token_urlsafe(32) for name in wanted}
    if any(saved.get(name) != value for name, value in values.items()):
        _write_env_file(path, saved | values)
    return values


def secret_from_home(name: str) -> tuple[str | None, Path]:
    """A secret `greenroom up` saved in ./.greenroom/secrets.env (run from the folder `up` ran
    in), and the file looked in."""
    path = (HOME / SECRETS_FILE).resolve()
    return read_env_file(path).get(name), path


def with_saved_redis_password(settings: Settings) -> Settings:
    """settings, with the Redis password `greenroom up` saved here when the URL has none
    (so that `greenroom pool ...` works from the folder `up` ran in, as `chat` does)."""
    from .local_redis import with_password

    password, _ = secret_from_home("GREENROOM_REDIS_PASSWORD")
    if urlsplit(settings.redis_url).password or not password:
        return settings
    return settings.model_copy(update={"redis_url": with_password(settings.redis_url, password)})


def read_env_file(path: Path) -> dict[str, str]:
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
