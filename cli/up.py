"""`greenroom up`: the whole stack from the Procfile under honcho, a local Redis when
needed, generated credentials (secretfile.py), and for each program an environment that
holds the secrets it needs and no others."""

import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

import click

from pool_manager.settings import Settings, get_settings

from .local_redis import local_redis, require_password, with_password
from .programs import _run_together, _url
from .running import hold_lock, refuse_taken_ports
from .secretfile import HOME, SECRETS_FILE, generated_secrets

PROCFILE = Path(__file__).resolve().parents[1] / "Procfile"
# What a program inherits from `up`'s environment, besides the GREENROOM_* settings.
PASSED = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "VIRTUAL_ENV",
          "PYTHONPATH", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY"}
# Secrets no program inherits: the API key table goes to `api` alone, the Flower password
# to `flower` alone (_program_env); every program gets the Redis URL, password included.
WITHHELD = {"GREENROOM_API_KEYS", "GREENROOM_FLOWER_PASSWORD", "GREENROOM_TOKEN", "GREENROOM_REDIS_PASSWORD"}


@click.command()
@click.option("--procfile", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Default: the Procfile of this checkout.")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=HOME, show_default=True,
              help="up's own state: generated secrets, Redis's data, process servers' records.")
@click.option("--verbose", is_flag=True, help="Log every task received and finished and every beat tick "
                                              "(default: what changed, one line each).")
def up(procfile: Path | None, home: Path, verbose: bool) -> None:
    """Everything in the Procfile under honcho: the API, a chat worker, a maintenance
    worker, beat and Flower; and Redis too, when the configured one is local and down.

    Without configured API keys, an admin token and a Flower password are made once and
    kept in HOME/secrets.env (mode 0600), and a Redis password when the Redis URL has none.
    The API gets the token's digest only, Flower alone its password."""
    settings = get_settings()
    commands = _procfile_commands(procfile or PROCFILE)
    home = home.resolve()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = hold_lock(home, settings)  # noqa: F841 (held while up runs)
    refuse_taken_ports(commands, settings)
    generated = generated_secrets(settings, home / SECRETS_FILE)
    redis_url = settings.redis_url
    if password := generated.get("GREENROOM_REDIS_PASSWORD"):
        redis_url = with_password(redis_url, password)
    with local_redis(redis_url, home / "redis"):
        require_password(redis_url)
        _print_welcome(settings, home / SECRETS_FILE, generated)
        common = _common_env(home, redis_url) | ({"GREENROOM_VERBOSE": "1"} if verbose else {})
        code = _run_together(commands, {name: _program_env(name, common, settings, generated) for name in commands})
    sys.exit(code)


def _procfile_commands(path: Path) -> dict[str, str]:
    from honcho.environ import parse_procfile

    if not path.is_file():
        raise click.ClickException(f"no Procfile at {path} (pass --procfile)")
    commands = dict(parse_procfile(path.read_text()).processes)
    if not commands:
        raise click.ClickException(f"{path} names no processes")
    return commands


def _common_env(home: Path, redis_url: str) -> dict[str, str]:
    """What every program gets: the allowlisted variables, the GREENROOM_* settings but the
    secret ones, the venv first on PATH (the Procfile says `greenroom ...`), the Redis URL."""
    env = {name: value for name, value in os.environ.items()
           if name in PASSED or name.startswith("LC_") or (name.startswith("GREENROOM_") and name not in WITHHELD)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    env.setdefault("GREENROOM_STATE_DIR", str(home / "state"))
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach honcho as they happen
    env["GREENROOM_REDIS_URL"] = redis_url
    return env


def _program_env(name: str, common: dict[str, str], settings: Settings, generated: dict[str, str]) -> dict[str, str]:
    """common, plus the one secret setting this Procfile process needs, if any."""
    if name == "api":
        return common | {"GREENROOM_API_KEYS": _api_keys(settings, generated)}
    if name == "flower":
        password = generated.get("GREENROOM_FLOWER_PASSWORD") or settings.flower_password.get_secret_value()
        return common | {"GREENROOM_FLOWER_PASSWORD": password}
    return common


def _api_keys(settings: Settings, generated: dict[str, str]) -> str:
    """The configured keys, or the generated token's digest (the API never sees it plain)."""
    if token := generated.get("GREENROOM_TOKEN"):
        digest = hashlib.sha256(token.encode()).hexdigest()
        return json.dumps({_admin_tenant(settings): f"sha256:{digest}"})
    return json.dumps({tenant: key.get_secret_value() for tenant, key in settings.api_keys.items()})


def _admin_tenant(settings: Settings) -> str:
    return settings.admin_tenants[0] if settings.admin_tenants else "admin"


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
        f"  Pools   {api_url}/ui   (the live pool page: sign in with the token)",
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
