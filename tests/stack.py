"""The whole stack as real processes: gunicorn API, Celery chat and pool workers, beat.

Each Stack has its own Redis database (Celery's queue names are global within one) and
its own deployment id, so its containers carry their own owner label.
"""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import RUN_ID, free_port, wait_until
from pool_manager.runtimes.docker import DockerRuntime
from pool_manager.runtimes.process import ProcessRuntime

VENV_BIN = Path(sys.executable).parent
TOKENS = {"acme": "acme-token", "globex": "globex-token", "admin": "admin-token"}


_databases = itertools.count(1)  # database 0 is the pool tests'


class Stack:
    def __init__(self, redis_url: str, name: str, folder: Path, pool: dict, **settings):
        database = next(_databases)
        assert database < 16, "more stacks than Redis databases"
        self.redis_url = f"{redis_url.rsplit('/', 1)[0]}/{database}"
        self.folder = folder
        self.api_url = f"http://127.0.0.1:{free_port()}"
        config = folder / "greenroom.toml"
        config.write_text(_toml_pool(pool))
        self.env = os.environ | {
            "GREENROOM_CONFIG": str(config),
            "GREENROOM_REDIS_URL": self.redis_url,
            "GREENROOM_DEPLOYMENT": f"{RUN_ID}-{name}",
            "GREENROOM_API_KEYS": json.dumps(TOKENS),
            "GREENROOM_API_PORT": self.api_url.rsplit(":", 1)[1],
            "GREENROOM_STATE_DIR": str(folder / "process-runtime"),
            **{f"GREENROOM_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, *names: str) -> "Stack":
        for name in names:
            self.start_one(name)
        if "api" in names:
            wait_until(self._api_answers, 30, message="the API")
        return self

    def start_one(self, name: str) -> None:
        commands = {
            "api": ["gunicorn", "-b", self.api_url.removeprefix("http://"), "-k", "gthread", "--threads", "16",
                    "api:create_app()"],
            "chat": ["celery", "-A", "workers.app", "worker", "-Q", "greenroom.chat", "--pool", "threads", "-c", "8",
                     "-n", f"chat-{name}-{free_port()}@%h", "--without-gossip", "--without-mingle", "-E"],
            "pool": ["celery", "-A", "workers.app", "worker", "-Q", "greenroom.pool", "--pool", "threads", "-c", "4",
                     "-n", f"pool-{free_port()}@%h", "--without-gossip", "--without-mingle", "-E"],
            "beat": ["celery", "-A", "workers.app", "beat", "-s", str(self.folder / "beat-schedule"),
                     "--pidfile="],
        }
        command = commands[name]
        log = open(self.folder / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen([str(VENV_BIN / command[0]), *command[1:]], env=self.env,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        process = self.processes.pop(name)
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)

    def stop(self) -> None:
        """Stop the processes, then remove the model servers they left (as `make clean`
        would: greenroom leaves them running on purpose, to adopt after a restart)."""
        for name in list(self.processes):
            self.kill(name)
        deployment = self.env["GREENROOM_DEPLOYMENT"]
        runtimes = [ProcessRuntime(deployment, self.env["GREENROOM_STATE_DIR"]), DockerRuntime(deployment)]
        for runtime in runtimes:
            if not isinstance(runtime, DockerRuntime) or runtime.ping():
                for instance in runtime.list_managed():
                    runtime.destroy(instance.id)
            runtime.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.folder.glob("*.log")))

    def client(self, tenant: str = "acme", timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=timeout,
                            headers={"Authorization": f"Bearer {TOKENS[tenant]}"})

    def _api_answers(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


def _toml_pool(pool: dict) -> str:
    lines = ["[pools.chatbot]"]
    for key, value in pool.items():
        if isinstance(value, dict):
            value = "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
        else:
            value = json.dumps(value)
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def wait_for_pool(client: httpx.Client, timeout: float = 30, **expected) -> dict:
    """Poll GET /v1/pools/chatbot until every expected count holds."""

    def matches():
        status = client.get("/v1/pools/chatbot").json()
        return status if all(status[k] == v for k, v in expected.items()) else None

    return wait_until(matches, timeout, interval=0.1, message=f"pool counts {expected}")


def chat(client: httpx.Client, text: str, session_id: str | None = None, wait: float = 30) -> dict:
    """Submit a one-message job and long-poll it to its end."""
    body = {"model": "chatbot", "messages": [{"role": "user", "content": text}]}
    if session_id:
        body["session_id"] = session_id
    submitted = client.post("/v1/jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    deadline = time.monotonic() + wait
    job = submitted.json()
    while job["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 10}).json()
    return job
