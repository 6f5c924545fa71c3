"""Helpers for the fault and soak tests: programs launched beside a Stack, the pool's
state against Docker's view, Docker's events, job events, polls that survive restarts,
the local dockerd, a stopwatch."""

import os
import signal
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import docker.errors
import httpx
import redis
import requests.exceptions

from bench.stack import start_program, stop_process_group
from conftest import require, wait_until
from pool_manager.keys import POOL_STATES, Keys
from pool_manager.schemas import FINAL
from stack import VENV_BIN, Stack

# ---------------------------------------------------------------- programs beside a Stack

class Programs:
    """Processes this module starts with a stack's environment, each in its own process
    group (so a signal reaches gunicorn's workers too), logged into the stack's folder."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, key: str, *argv: str, **env: str) -> subprocess.Popen:
        argv = [str(VENV_BIN / argv[0]), *argv[1:]]
        log = self.stack.folder / f"{key}.log"
        self.running[key] = process = start_program(argv, self.stack.env | env, log)
        return process

    def api(self) -> subprocess.Popen:
        """`greenroom api`, which loads api.gunicorn_conf (long polls end on SIGTERM),
        under this module's control so that a test can signal and restart it."""
        process = self.start("api", "greenroom", "api", "--workers", "1", "--threads", "16")
        wait_until(lambda: api_answers(self.stack), 30, message="the API")
        return process

    def signal(self, key: str, sig: int) -> subprocess.Popen:
        process = self.running[key]
        os.killpg(process.pid, sig)
        return process

    def stop(self, key: str, timeout: float = 15) -> None:
        stop_process_group(self.running.pop(key), timeout=timeout)

    def stop_all(self) -> None:
        for key in list(self.running):
            self.stop(key)


def api_answers(stack: Stack) -> bool:
    try:
        return httpx.get(f"{stack.api_url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------- pool state vs Docker

def deployment(stack: Stack) -> str:
    return stack.env["GREENROOM_DEPLOYMENT"]


def state_ids(stack: Stack, pool: str = "chatbot") -> dict[str, set[str]]:
    """Container ids by state, as the pool's Redis state has them."""
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    keys = Keys(deployment(stack))
    try:
        with client.pipeline(transaction=True) as pipe:  # one snapshot: a move is never seen twice
            for state in POOL_STATES:
                pipe.zrange(keys.pool(pool, state), 0, -1)
            return {state: set(ids) for state, ids in zip(POOL_STATES, pipe.execute())}
    finally:
        client.close()


def docker_names(docker_engine, stack: Stack, all: bool = True) -> set[str]:
    """The stack's labelled containers as Docker lists them (running only unless all)."""
    rows = docker_engine.api.containers(all=all, filters={"label": f"greenroom.owner={deployment(stack)}"})
    return {row["Names"][0].lstrip("/") for row in rows}


def docker_matches_state(docker_engine, stack: Stack) -> dict | None:
    """The state's idle+warming+assigned when it names exactly the containers Docker has."""
    ids = state_ids(stack)
    known = set().union(*ids.values())
    return ids if known == docker_names(docker_engine, stack) else None


def wait_docker_matches_state(docker_engine, stack: Stack, timeout: float = 30) -> dict:
    return wait_until(lambda: docker_matches_state(docker_engine, stack), timeout, interval=0.2,
                      message="Docker's containers to equal the pool state's")


def wait_pool(client: httpx.Client, timeout: float = 30, **expected) -> dict:
    """Poll GET /v1/pools/chatbot until every expected count holds; a timeout shows the
    last status (Stack's wait_for_pool names only what it expected)."""
    last: dict = {}

    def matches():
        nonlocal last
        try:
            last = client.get("/v1/pools/chatbot").json()
        except httpx.TransportError:
            return None
        return last if all(last.get(k) == v for k, v in expected.items()) else None

    try:
        return wait_until(matches, timeout, interval=0.1, message=f"pool counts {expected}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last status: {last}") from None


# ---------------------------------------------------------------- Docker's own account

class DockerEvents:
    """A deployment's containers created and destroyed, heard live on Docker's event stream
    from the moment this is built (the engine keeps only its last few hundred events for
    later queries), in the engine's own order: every container that ever existed counts,
    however briefly, where sampling the list would miss it."""

    def __init__(self, docker_engine, deployment: str):
        self.seen: list[tuple[float, str, str]] = []  # (unix time, "create" | "destroy", container name)
        self.error: BaseException | None = None
        self._stream = docker_engine.events(decode=True, filters={
            "type": "container", "event": ["create", "destroy"], "label": f"greenroom.owner={deployment}"})
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        try:
            for event in self._stream:
                self.seen.append((event["timeNano"] / 1e9, event["Action"], event["Actor"]["Attributes"]["name"]))
        except Exception as exc:  # closing the stream ends it quietly: anything raised is a failure
            self.error = exc

    def close(self) -> None:
        """Stop listening (after the last events in flight); raise if the stream failed."""
        time.sleep(0.5)
        self._stream.close()
        self._thread.join(5)
        assert not self._thread.is_alive(), "Docker's event stream did not stop"
        if self.error is not None:
            raise AssertionError(f"Docker's event stream failed: {self.error!r}") from self.error

    def times(self, action: str) -> list[float]:
        return sorted(at for at, seen, _ in self.seen if seen == action)

    def peak(self) -> int:
        """The most containers that existed at once (created, not yet removed)."""
        existing, peak = 0, 0
        for _, action, _ in self.seen:
            existing += 1 if action == "create" else -1
            peak = max(peak, existing)
        return peak


# ---------------------------------------------------------------- job events

class JobEvents:
    """Every status a job record moved to, heard on its Redis channel (the transition
    script publishes once per transition, so a second 'succeeded' would show here)."""

    def __init__(self, stack: Stack):
        self.client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.prefix = Keys(deployment(stack)).job_events("")
        self.pubsub.psubscribe(self.prefix + "*")
        self.seen: dict[str, list[str]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                self.seen[message["channel"].removeprefix(self.prefix)].append(message["data"])

    def count(self, job_id: str, status: str) -> int:
        return self.seen[job_id].count(status)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pubsub.close()
        self.client.close()


# ---------------------------------------------------------------- what Redis is asked

class RedisCommands:
    """Every command Redis runs from now on (MONITOR), as "NAME key args" text: to see
    that a program has reached a step (a long poll reading its job) rather than guess it
    with a sleep."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url)
        self.monitor = self.client.monitor().__enter__()  # MONITOR is on once this returns
        self.seen: list[str] = []
        self.error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        try:
            while not self._closing:
                self.seen.append(self.monitor.next_command()["command"])
        except Exception as exc:  # the connection closed under us, or a real failure
            if not self._closing:
                self.error = exc

    def count(self, command: str) -> int:
        assert self.error is None, f"MONITOR failed: {self.error!r}"
        return sum(1 for seen in list(self.seen) if seen == command)

    def close(self) -> None:
        self._closing = True
        self.monitor.__exit__()
        self._thread.join(5)
        self.client.close()


# ---------------------------------------------------------------- clients that ride out restarts

def submit(client: httpx.Client, text: str, session_id: str | None = None, stream: bool = False) -> httpx.Response:
    body = {"model": "chatbot", "messages": [{"role": "user", "content": text}], "stream": stream}
    if session_id:
        body["session_id"] = session_id
    return client.post("/v1/jobs", json=body)


def read_job(client: httpx.Client, job_id: str, wait: float = 0) -> dict | None:
    """The job, or None when the API is unreachable or answers 5xx (a restart)."""
    try:
        response = client.get(f"/v1/jobs/{job_id}", params={"wait": wait} if wait else None)
    except httpx.TransportError:
        return None
    if response.status_code >= 500:
        return None
    assert response.status_code == 200, response.text
    return response.json()


def poll_until_final(client: httpx.Client, job_id: str, timeout: float) -> dict:
    """Long-poll the job to a final state, retrying (briefly paused) through errors."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = read_job(client, job_id, wait=min(10, max(1, int(deadline - time.monotonic()))))
        if job and job["status"] in FINAL:
            return job
        if job is None:
            time.sleep(0.2)
    raise AssertionError(f"job {job_id} not final after {timeout}s: {job}")


def wait_status(client: httpx.Client, job_id: str, status: str, timeout: float = 30) -> dict:
    return wait_until(lambda: (job := read_job(client, job_id)) and job["status"] == status and job,
                      timeout, interval=0.05, message=f"job {job_id} {status}")


class Stopwatch:
    def __init__(self):
        self.began = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.began


def report(title: str, **figures) -> None:
    """One line for `pytest -s`: what a fault test saw."""
    shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"\n[{title}] {shown}")


# ---------------------------------------------------------------- the local Docker daemon

def dockerd_restart_refusal(pids: list[str], euid: int, supervised: bool) -> str | None:
    """Why a test cannot stop and start this machine's dockerd safely, or None."""
    if euid != 0:
        return "restarting dockerd needs root"
    if len(pids) != 1:
        return f"restarting dockerd needs exactly one local dockerd, found {len(pids)}"
    if supervised:
        return "dockerd is supervised by systemd, which would race this test's restart"
    return None


class DockerDaemon:
    """The local dockerd, stopped and started again exactly as it was launched (the same
    argv, environment, working directory and log)."""

    def __init__(self, pid: int):
        proc = Path(f"/proc/{pid}")
        self.pid = pid
        self.argv = (proc / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        self.env = dict(line.split(b"=", 1) for line in (proc / "environ").read_bytes().split(b"\0") if b"=" in line)
        cwd = os.readlink(proc / "cwd")
        self.cwd = cwd if os.path.isdir(cwd) else "/"  # it reads "<path> (deleted)" once removed
        log = os.readlink(proc / "fd/1")
        self.log = log if log.startswith("/") and os.path.isfile(log) else os.devnull

    @classmethod
    def find(cls) -> "DockerDaemon":
        """The daemon, or require()'s skip (a failure under GREENROOM_REQUIRE_DOCKER=1)
        where it cannot be restarted safely."""
        found = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout.split()
        supervised = os.path.exists("/run/systemd/system") and subprocess.run(
            ["systemctl", "is-active", "--quiet", "docker"], capture_output=True).returncode == 0
        if reason := dockerd_restart_refusal(found, os.geteuid(), supervised):
            require(reason)
        return cls(int(found[0]))

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM; with --live-restore it exits without stopping the containers."""
        os.kill(self.pid, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{self.pid}").exists(), timeout, interval=0.05, message="dockerd to exit")

    def start(self, engine, timeout: float = 60) -> None:
        with open(self.log, "ab") as out:
            process = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = process.pid
        wait_until(lambda: _answers(engine), timeout, interval=0.05, message="dockerd to answer again")

    def running(self) -> bool:
        return Path(f"/proc/{self.pid}").exists()


def _answers(engine) -> bool:
    try:
        return engine.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return False
