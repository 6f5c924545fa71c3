"""The Docker daemon restarted under a running pool: greenroom reports the outage, keeps
serving from the containers it holds, and recovers on its own once the engine answers.

The engine runs with --live-restore (scripts/setup.sh), so its containers outlive it.
One idle container is killed while no daemon watches it: that one must be replaced,
the survivors kept. conftest runs this module last: it stops the engine every test uses.
"""

import os
import signal
import subprocess
from pathlib import Path

import docker.errors
import pytest
import requests.exceptions

from conftest import wait_until
from faultkit import Stopwatch, report, state_ids, wait_docker_matches_state, wait_pool
from stack import Stack, chat

pytestmark = [pytest.mark.timeout(240), pytest.mark.restarts_docker_engine]


class DockerDaemon:
    """The local dockerd, stopped and started again exactly as it was launched (the same
    argv, environment, working directory and log)."""

    def __init__(self, pid: int):
        proc = Path(f"/proc/{pid}")
        self.pid = pid
        self.argv = (proc / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        self.env = dict(line.split(b"=", 1) for line in (proc / "environ").read_bytes().split(b"\0") if b"=" in line)
        self.cwd = os.readlink(proc / "cwd")
        log = os.readlink(proc / "fd/1")
        self.log = log if log.startswith("/") and os.path.isfile(log) else os.devnull

    @classmethod
    def find(cls) -> "DockerDaemon":
        found = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout.split()
        if os.geteuid() != 0 or len(found) != 1:
            pytest.skip("needs root and exactly one local dockerd to restart")
        supervised = os.path.exists("/run/systemd/system") and subprocess.run(
            ["systemctl", "is-active", "--quiet", "docker"], capture_output=True).returncode == 0
        if supervised:
            pytest.skip("dockerd is supervised by systemd, which would race this test's restart")
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


@pytest.fixture
def dockerd(docker_engine):
    """The daemon, started again after the test whatever happened in it."""
    daemon = DockerDaemon.find()
    yield daemon
    if not daemon.running():
        daemon.start(docker_engine)


@pytest.fixture
def pool_stack(redis_url, docker_engine, tmp_path, request):
    pool = {"image": "greenroom/chatbot:latest", "runtime": "docker", "target_idle": 3, "max_total": 8,
            "env": {"BOOT_SECONDS": "1"}}
    stack = Stack(redis_url, "dockerd", tmp_path, pool, reconcile_interval_s=1, claim_timeout_s=30,
                  chat_timeout_s=5).start("pool", "chat", "beat", "api")
    yield stack
    stack.stop()
    if request.node.report_call.failed:
        print(stack.logs())


def test_a_docker_daemon_restart_is_reported_and_recovered(pool_stack, dockerd, docker_engine):
    with pool_stack.client(timeout=15) as client:
        wait_pool(client, idle=3)
        ada = chat(client, "my name is Ada")
        assert ada["status"] == "succeeded", ada
        ada_container = ada["result"]["greenroom"]["container"]
        wait_pool(client, idle=3, assigned=1)
        before = state_ids(pool_stack)
        victim = min(before["idle"])
        victim_pid = docker_engine.api.inspect_container(victim)["State"]["Pid"]

        clock = Stopwatch()
        dockerd.stop()
        os.kill(victim_pid, signal.SIGKILL)  # dies while no daemon watches it
        down = wait_pool(client, degraded=True)
        assert "docker engine unreachable" in down["runtime_error"], down
        assert (down["idle"], down["assigned"]) == (3, 1), down  # an outage forgets no container
        reported = clock()
        metrics = client.get("/metrics").text
        assert 'greenroom_pool_degraded{pool="chatbot"} 1' in metrics

        # Sessions are served from the containers already running: no engine needed.
        follow_up = chat(client, "what is my name?", session_id=ada["session_id"])
        assert follow_up["status"] == "succeeded", follow_up
        assert follow_up["result"]["choices"][0]["message"]["content"] == "Your name is Ada."
        newcomer = chat(client, "hello during the outage")
        assert newcomer["status"] == "succeeded", newcomer  # a dead pick is retried on another
        newcomer_container = newcomer["result"]["greenroom"]["container"]
        assert newcomer_container != victim

        dockerd.start(docker_engine)
        engine_back = clock()
        recovered = wait_pool(client, 60, idle=3, assigned=2, degraded=False)
        assert recovered["runtime_error"] is None, recovered
        after = wait_docker_matches_state(docker_engine, pool_stack)
        pool_back = clock()

    survivors = set().union(*before.values()) - {victim}
    kept = set().union(*after.values())
    assert survivors <= kept, (survivors, after)  # every container that lived through it is still in use
    assert victim not in kept
    assert after["assigned"] == {ada_container, newcomer_container}
    replaced = kept - survivors
    assert len(replaced) == 2, after  # for the victim and for the newcomer's claim, nothing more
    with pool_stack.client(timeout=15) as client:
        again = chat(client, "and now?", session_id=ada["session_id"])
    assert again["result"]["greenroom"]["container"] == ada_container, again
    report("docker daemon restart", degraded_reported_s=reported, engine_back_s=engine_back,
           pool_back_s=pool_back - engine_back, survivors_kept=len(survivors), replaced=len(replaced),
           served_during_outage=2)
