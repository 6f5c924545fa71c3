"""The Docker daemon restarted under a running pool: greenroom reports the outage, keeps
serving from the containers it holds, and recovers on its own once the engine answers.

The engine runs with --live-restore (scripts/setup.sh), so its containers outlive it.
One idle container is killed while no daemon watches it: that one must be replaced,
the survivors kept. conftest runs this module last: it stops the engine every test uses.
"""

import os
import signal

import pytest

from faultkit import DockerDaemon, Stopwatch, report, state_ids, wait_docker_matches_state, wait_pool
from stack import Stack, chat

pytestmark = [pytest.mark.timeout(240), pytest.mark.restarts_docker_engine]


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
