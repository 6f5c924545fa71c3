"""Waiting costs nothing: a job that finds no container parks in its pool's line (in Redis)
and gives its worker thread back; a container that turns idle goes to the head of the
line by event, not by polling.

One stack on its own redis-server (so its command count is its own): the API, a chat
worker with 2 threads, the pool worker and beat; claim_timeout_s shortened to 20 s and
reconcile_interval_s to 1 s so that a wait's deadline is reached within the test. A pool
of one container (max_total 1), held by a session the tests open: every new session
waits. The process runtime: a container is not the point here."""

import time

import pytest
import redis

from bench.stack import RedisServer
from conftest import wait_until
from faultkit import poll_until_final, read_job, submit, wait_status
from pool_manager.keys import Keys
from stack import Stack, chat, wait_for_pool

pytestmark = pytest.mark.timeout(120)
CLAIM_TIMEOUT_S = 20
THREADS = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("waiting")
    server = RedisServer(folder / "redis")
    server.start()
    pool = {"command": ["python3", "images/chatbot/server.py"], "runtime": "process", "target_idle": 1,
            "max_total": 1, "env": {"BOOT_SECONDS": "0"}}
    running = Stack(server.url, "waiting", folder, pool, chat_concurrency=THREADS, claim_timeout_s=CLAIM_TIMEOUT_S,
                    reconcile_interval_s=1)
    running.start("pool", "chat", "beat", "api")
    yield running
    running.stop()
    server.stop()
    if request.session.testsfailed:
        print(running.logs())


@pytest.fixture
def held(stack):
    """A session holding the pool's one container; closed afterwards."""
    with stack.client() as client:
        wait_for_pool(client, idle=1)
        session = chat(client, "I hold the only container")
        assert session["status"] == "succeeded", session
        yield client, session["session_id"]
        client.delete(f"/v1/sessions/{session['session_id']}")
        wait_for_pool(client, idle=1, assigned=0)


def line_size(stack: Stack) -> int:
    with redis.Redis.from_url(stack.redis_url) as client:
        return client.zcard(Keys(stack.deployment).pool("chatbot", "waiting"))


def job_record(stack: Stack, job_id: str) -> dict:
    with redis.Redis.from_url(stack.redis_url, decode_responses=True) as client:
        return client.hgetall(Keys(stack.deployment).job(job_id))


def park(client, count: int) -> list[str]:
    jobs = [submit(client, f"waiting {n}").json()["id"] for n in range(count)]
    for job_id in jobs:
        wait_status(client, job_id, "waiting_for_container")
    return jobs


def test_a_follow_up_is_served_while_more_jobs_wait_than_the_worker_has_threads(stack, held):
    """Three times as many jobs wait as the chat worker has threads, yet a follow-up in the
    open session is relayed while they all still wait. (A waiting job that held its thread,
    as before, left the follow-up queued behind them until their deadline failed them.)"""
    client, session = held
    waiting = park(client, 3 * THREADS)
    follow_up = chat(client, "still there?", session_id=session)
    assert follow_up["status"] == "succeeded", follow_up
    assert [read_job(client, job_id)["status"] for job_id in waiting] == ["waiting_for_container"] * len(waiting)
    assert {job_record(stack, job_id)["deliveries"] for job_id in waiting} == {"1"}  # each parked once, not polling
    for job_id in waiting:
        client.delete(f"/v1/jobs/{job_id}")


def test_a_parked_job_past_its_deadline_fails_no_container_available_and_leaves_the_line(stack, held):
    client, _ = held
    job_id = park(client, 1)[0]
    job = poll_until_final(client, job_id, timeout=CLAIM_TIMEOUT_S + 30)
    assert job["status"] == "failed" and job["error"]["code"] == "no_container_available", job
    waited = float(job["finished_at"]) - float(job["created_at"])
    assert CLAIM_TIMEOUT_S <= waited < CLAIM_TIMEOUT_S + 15, waited  # its deadline, then the next hand-off
    assert line_size(stack) == 0


def test_a_cancelled_parked_job_leaves_the_line_at_once_and_never_runs(stack, held):
    client, session = held
    job_id = park(client, 1)[0]
    assert client.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert line_size(stack) == 0  # no longer demand: no boot for it, no container handed to it
    client.delete(f"/v1/sessions/{session}")  # the container comes free ...
    wait_for_pool(client, idle=1, assigned=0)  # ... and stays idle
    time.sleep(1)
    assert read_job(client, job_id)["status"] == "cancelled"
    assert job_record(stack, job_id)["deliveries"] == "1"


def test_a_freed_container_goes_to_the_head_of_the_line_by_event(stack, held):
    """The session ends; the container booted in its place goes to the first job parked,
    which runs holding it; the second keeps waiting, first in line now."""
    client, session = held
    first, second = park(client, 2)
    assert [read_job(client, job_id)["position"] for job_id in (first, second)] == [1, 2]
    client.delete(f"/v1/sessions/{session}")
    job = poll_until_final(client, first, timeout=30)
    assert job["status"] == "succeeded", job
    meta = job["result"]["greenroom"]
    assert meta["new_session"] is True and meta["warm"] is False
    timings = meta["timings"]  # the wait counted once: queued and waited fit in the total
    assert timings["waited_for_container_s"] > 0
    assert timings["queued_s"] + timings["waited_for_container_s"] + timings["in_container_s"] <= timings["total_s"]
    still = read_job(client, second)
    assert still["status"] == "waiting_for_container" and still["position"] == 1  # its place as of now
    assert job_record(stack, first)["deliveries"] == "2"  # parked once, sent again once handed
    client.delete(f"/v1/jobs/{second}")
    client.delete(f"/v1/sessions/{first}")


def test_waiting_jobs_cost_redis_no_calls_while_they_wait(stack, held):
    """Redis commands per second with 40 jobs parked, against none: under one more per
    waiting job per second (a job that polled, as before, cost about 54)."""
    client, _ = held

    def settled() -> None:
        with redis.Redis.from_url(stack.redis_url) as raw:
            wait_until(lambda: raw.llen("greenroom.pool") == 0, 30, message="the pool queue drained")
        time.sleep(1)  # the last pass

    def commands_per_second(span_s: float = 3.0) -> float:
        with redis.Redis.from_url(stack.redis_url) as raw:
            before = raw.info("stats")["total_commands_processed"]
            time.sleep(span_s)
            return (raw.info("stats")["total_commands_processed"] - before) / span_s

    quiet = commands_per_second()
    waiting = park(client, 40)
    try:
        settled()  # each park asked for a reconcile: those passes are done before counting
        loaded = commands_per_second()
        assert all(read_job(client, job_id)["status"] == "waiting_for_container" for job_id in waiting)
        assert (loaded - quiet) / len(waiting) < 1, (quiet, loaded)
    finally:
        for job_id in waiting:
            client.delete(f"/v1/jobs/{job_id}")


def test_a_job_cancelled_after_its_hand_off_frees_the_container_it_was_handed(stack, held):
    """The hand-off opened the job's session on a container and sent the job again, but no
    chat worker is there to take it; the job is cancelled meanwhile. The worker, back,
    finds it cancelled and closes the session it never used: no container stays held."""
    client, session = held
    job_id = park(client, 1)[0]
    stack.kill("chat")
    try:
        client.delete(f"/v1/sessions/{session}")
        wait_until(lambda: job_record(stack, job_id).get("handed_at"), 30, message="the hand-off")
        assert client.get(f"/v1/sessions/{job_id}").json()["state"] == "active"  # opened for it, not yet used
        assert client.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    finally:
        stack.start_one("chat")
    wait_until(lambda: client.get(f"/v1/sessions/{job_id}").json()["state"] == "closed", 30,
               message="the unused session closed")
    wait_for_pool(client, idle=1, assigned=0)
