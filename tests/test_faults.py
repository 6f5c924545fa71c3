"""Faults mid-job against the real stack: a container killed, the API restarted under a
long poll (a chat worker SIGKILLed: test_faults_worker.py). Each test prints what it saw and how long recovery took
(`pytest -s`); times are reported, never asserted."""

import signal
import threading
import time

import httpx
import pytest

from conftest import wait_until
from faultkit import (FINAL, Programs, RedisCommands, Stopwatch, docker_names, poll_until_final, report, submit,
                      wait_docker_matches_state, wait_pool, wait_status)
from pool_manager.keys import Keys
from stack import Stack

pytestmark = pytest.mark.timeout(180)
REPLY_DELAY_S = 3  # long enough to kill something mid-reply


@pytest.fixture(scope="module")
def stack(redis_url, docker_engine, tmp_path_factory, request):
    pool = {"image": "greenroom/chatbot:latest", "runtime": "docker", "target_idle": 2, "max_total": 6,
            "env": {"BOOT_SECONDS": "1", "REPLY_DELAY_SECONDS": str(REPLY_DELAY_S)}}
    running = Stack(redis_url, "faults", tmp_path_factory.mktemp("faults"), pool, claim_timeout_s=4,
                    chat_timeout_s=6, reconcile_interval_s=2)
    running.start("pool", "chat", "beat")
    yield running
    running.stop()
    if request.session.testsfailed:
        print(running.logs())


@pytest.fixture(scope="module")
def programs(stack):
    """The API as `greenroom api` runs it (Stack's is bare gunicorn, without the hook
    that ends long polls on SIGTERM)."""
    programs = Programs(stack)
    try:
        programs.api()
        yield programs
    finally:
        programs.stop_all()


@pytest.fixture
def client(stack, programs):
    with stack.client() as client:
        wait_pool(client, idle=2)
        yield client


def test_a_container_killed_mid_reply_first_message_retries_later_message_is_lost(stack, client, docker_engine):
    job_id = submit(client, "hello").json()["id"]
    wait_status(client, job_id, "running")
    first = client.get(f"/v1/sessions/{job_id}").json()["container"]
    docker_engine.containers.get(first).kill()
    clock = Stopwatch()
    job = poll_until_final(client, job_id, timeout=60)
    retried = clock()
    assert job["status"] == "succeeded", job
    second = job["result"]["greenroom"]["container"]
    assert second != first and job["result"]["greenroom"]["new_session"] is True
    assert client.get(f"/v1/sessions/{job_id}").json()["container"] == second
    wait_until(lambda: first not in docker_names(docker_engine, stack), 15, message=f"{first} removed")
    wait_pool(client, idle=2, assigned=1)
    refilled = clock()

    later = submit(client, "still there?", session_id=job_id).json()["id"]
    wait_status(client, later, "running")
    docker_engine.containers.get(second).kill()
    clock = Stopwatch()
    lost = poll_until_final(client, later, timeout=60)
    failed = clock()
    assert lost["status"] == "failed" and lost["error"]["code"] == "container_lost", lost
    assert client.get(f"/v1/sessions/{job_id}").json()["state"] == "broken"
    wait_pool(client, idle=2, assigned=0)
    wait_docker_matches_state(docker_engine, stack)
    assert not {first, second} & docker_names(docker_engine, stack)
    report("container killed", first_message=job["status"], first_message_s=retried, pool_refilled_s=refilled,
           later_message=lost["error"]["code"], later_message_s=failed)


def test_an_api_restart_ends_a_long_poll_and_the_next_poll_gets_the_result(stack, programs, client):
    """SIGTERM reaches the API while it holds a long poll (seen on Redis: the poll read the
    job, then read it again once waiting on its events): the poll is answered at once with
    the job as it stands, not dropped and not held to the job's end."""
    job_id = submit(client, "hello").json()["id"]
    wait_status(client, job_id, "running")
    read = f"HGETALL {Keys(stack.deployment).job(job_id)}"
    commands = RedisCommands(stack.redis_url)  # from here on, only the long poll reads the job whole
    poll, held = {}, threading.Event()
    poller = threading.Thread(target=_long_poll, args=(stack, job_id, poll, held))
    try:
        poller.start()
        assert held.wait(5)
        wait_until(lambda: commands.count(read) >= 2, 10, interval=0.01, message="the API holding the poll")
    finally:
        commands.close()
    old = programs.signal("api", signal.SIGTERM)
    clock = Stopwatch()
    poller.join(40)
    assert not poller.is_alive()
    answered = poll["ended"] - clock.began
    old.wait(20)
    programs.running.pop("api")
    exited = clock()
    programs.start("api", "greenroom", "api", "--workers", "1", "--threads", "16")
    job = poll_until_final(client, job_id, timeout=60)
    assert job["status"] == "succeeded", job
    assert "answer" in poll, poll  # answered, not dropped
    status_code, body = poll["answer"]
    assert status_code == 200 and body["id"] == job_id, poll
    assert body["status"] not in FINAL, poll  # the job as it stood: not held until its end
    assert poll["ended_at"] < float(job["finished_at"])
    report("API restart", poll_answer=body["status"], poll_returned_after_sigterm_s=answered, old_api_exited_s=exited,
           result_s=clock(), final=job["status"])


def _long_poll(stack: Stack, job_id: str, outcome: dict, held: threading.Event) -> None:
    with stack.client(timeout=45) as client:
        held.set()
        try:
            response = client.get(f"/v1/jobs/{job_id}", params={"wait": 30})
            outcome["answer"] = (response.status_code, response.json())
        except (httpx.TransportError, ValueError) as exc:
            outcome["error"] = exc
    outcome["ended"], outcome["ended_at"] = time.monotonic(), time.time()
