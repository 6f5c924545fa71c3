"""A private greenroom stack as real processes: the API, a chat worker, a pool worker and
beat, each started with the `greenroom` command, on their own Redis (a redis-server of
their own on a free loopback port, unless given one) and under their own deployment id,
so that their model servers carry their own owner label.

    with Stack(folder, {"image": IMAGE, "runtime": "docker", "env": {"BOOT_SECONDS": "2"}}) as stack:
        ...  # stack.api_url, stack.redis_url, stack.token, stack.deployment

`stop()` (also on leaving the `with`, on Ctrl-C or an exception) ends the processes, then
removes every model server of the deployment: Docker containers by the label
greenroom.owner=<deployment>, and process-runtime servers by their records.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis

GREENROOM = str(Path(sys.executable).parent / "greenroom")
IMAGE = "greenroom/chatbot:latest"
PROGRAMS = ("api", "chat", "pool", "beat")
OWNER_LABEL = "greenroom.owner"
UNLIMITED = {"sessions": 100_000, "jobs_in_flight": 100_000, "submissions_per_second": 100_000}  # tenant_limits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll predicate until it returns something truthy (returned), at most timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {message}")


def start_program(argv: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """argv in a process group of its own (a signal reaches its children too), output to log."""
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop_process_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Signal the group, wait; SIGKILL what is left after timeout."""
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout)
    except ProcessLookupError:
        process.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def pool_toml(pools: dict[str, dict]) -> str:
    """[pools.<name>] tables from plain dicts (inline tables for dict values)."""
    lines = []
    for name, spec in pools.items():
        lines.append(f"[pools.{name}]")
        for key, value in spec.items():
            if isinstance(value, dict):
                value = "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
            else:
                value = json.dumps(value)
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


class RedisServer:
    """redis-server on a loopback port (a free one unless given), as greenroom wants it
    run: a password (in a config file of mode 0600, never on the command line), a memory
    cap that refuses writes rather than evicting, and, when durable, an append-only file
    fsynced on every write. Restartable on the same port and files."""

    def __init__(self, folder: Path, port: int | None = None, durable: bool = False, maxmemory: str = "512mb"):
        self.folder = folder
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(18)
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        self.durable, self.maxmemory = durable, maxmemory
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        if not server:
            raise RuntimeError("redis-server is not installed (scripts/setup.sh installs it)")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "redis.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self._config())
        with open(self.folder / "redis.log", "ab") as log:
            self.process = subprocess.Popen([server, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_until(self._pings, 15, message="redis-server")

    def _config(self) -> str:
        persistence = ["appendonly yes", "appendfsync always"] if self.durable else ["appendonly no"]
        return "\n".join([f"port {self.port}", "bind 127.0.0.1", 'save ""', f'dir "{self.folder}"',
                          f'requirepass "{self.password}"', f"maxmemory {self.maxmemory}",
                          "maxmemory-policy noeviction", *persistence]) + "\n"

    def _pings(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5) as client:
                return client.ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """SIGTERM: redis-server flushes its append-only file, if any, and exits."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class Stack:
    def __init__(self, folder: Path, pool: dict, *, redis_url: str | None = None, deployment: str | None = None,
                 tokens: dict[str, str] | None = None, api_args: tuple[str, ...] = (), **settings):
        """pool: the `chatbot` pool's spec; settings: any other Settings field, as GREENROOM_* env."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.deployment = deployment or f"bench-{secrets.token_hex(4)}"
        self.tokens = tokens or {"admin": secrets.token_urlsafe(24)}
        self.redis = None if redis_url else RedisServer(self.folder / "redis")
        self.redis_url = redis_url or self.redis.url
        self.api_url = f"http://127.0.0.1:{free_port()}"
        self.api_args = api_args
        config = self.folder / "greenroom.toml"
        config.write_text(pool_toml({"chatbot": pool}))
        self.env = _inherited_env() | {
            "GREENROOM_CONFIG": str(config),
            "GREENROOM_REDIS_URL": self.redis_url,
            "GREENROOM_DEPLOYMENT": self.deployment,
            "GREENROOM_API_KEYS": json.dumps(self.tokens),
            "GREENROOM_API_PORT": self.api_url.rsplit(":", 1)[1],
            "GREENROOM_STATE_DIR": str(self.folder / "state"),
            "PYTHONUNBUFFERED": "1",
            **{f"GREENROOM_{k.upper()}": json.dumps(v) if isinstance(v, dict | list) else str(v)
               for k, v in settings.items()},
        }
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def token(self) -> str:
        """The first tenant's token (the admin's, unless tokens were given)."""
        return next(iter(self.tokens.values()))

    def __enter__(self) -> "Stack":
        try:
            return self.start(*PROGRAMS)
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # processes
    def start(self, *names: str) -> "Stack":
        if self.redis and self.redis.process is None:
            self.redis.start()
        for name in names:
            self.start_one(name)
        if "api" in names:
            wait_until(self.api_answers, 30, message="the API")
        return self

    def command(self, name: str) -> list[str]:
        """api, chat, pool, beat; pool-<engine>: the pool worker of that engine (engines.py)."""
        node = f"{name}-{self.deployment}-{secrets.token_hex(2)}@%h"
        if name.startswith("pool-"):
            return [GREENROOM, "worker", "--queue", "pool", "--engine", name.removeprefix("pool-"), "--name", node]
        return {
            "api": [GREENROOM, "api", *self.api_args],
            "chat": [GREENROOM, "worker", "--queue", "chat", "--name", node],
            "pool": [GREENROOM, "worker", "--queue", "pool", "--name", node],
            "beat": [GREENROOM, "beat"],
        }[name]

    def start_one(self, name: str) -> None:
        self.processes[name] = start_program(self.command(name), self.env, self.folder / f"{name}.log")

    def kill(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        stop_process_group(self.processes.pop(name), sig, timeout)

    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items() if process.poll() is None}

    def stop(self) -> None:
        """Stop the processes, then remove the model servers they left (greenroom leaves
        them running on purpose, to adopt after a restart), then Redis."""
        for name in list(self.processes):
            self.kill(name)
        try:
            remove_model_servers(self.deployment, self.env["GREENROOM_STATE_DIR"])
        finally:
            if self.redis:
                self.redis.stop()

    def logs(self, tail: int | None = 4000) -> str:
        """Every program's log, the last `tail` characters of each (None: whole)."""
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-tail if tail else 0:]}"
                         for p in sorted(self.folder.glob("**/*.log")))

    # HTTP
    def client(self, tenant: str | None = None, timeout: float = 60) -> httpx.Client:
        token = self.tokens[tenant] if tenant else self.token
        return httpx.Client(base_url=self.api_url, timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    def api_answers(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


def _inherited_env() -> dict[str, str]:
    """This environment without GREENROOM_* settings: the stack is configured by us alone
    (GREENROOM_DOCKER_HOST stays: it says where the engine is)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_") or k == "GREENROOM_DOCKER_HOST"}


def remove_model_servers(deployment: str, state_dir: str) -> int:
    """Every container labelled greenroom.owner=<deployment>, and every process-runtime
    server of the deployment: removed. Returns how many there were."""
    from pool_manager.runtimes.docker import DockerRuntime
    from pool_manager.runtimes.process import ProcessRuntime

    docker_runtime = DockerRuntime(deployment)
    try:
        names = []
        if docker_runtime.ping():
            filters = {"label": [f"{OWNER_LABEL}={deployment}"]}
            names = [c["Names"][0].lstrip("/") for c in docker_runtime.client.api.containers(all=True, filters=filters)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(docker_runtime.destroy, names))
    finally:
        docker_runtime.close()
    process_runtime = ProcessRuntime(deployment, state_dir)
    instances = process_runtime.list_managed()
    for instance in instances:
        process_runtime.destroy(instance.id)
    return len(names) + len(instances)
