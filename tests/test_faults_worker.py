"""A chat worker SIGKILLed mid-job, with the default timing settings: claim_timeout_s,
chat_timeout_s (so the broker's visibility timeout, 560 s), job_lease_s and the beat
intervals are all left as a user runs them. The dead worker's job must go out again once
its lease lapses, finish once, and answer once. Times are reported (`pytest -s`); the
bound asserted is the promise, 60 s, far above what a healthy run takes (about 25 s)."""

import signal

import pytest
import redis

from conftest import wait_until
from faultkit import (JobEvents, Stopwatch, poll_until_final, report, state_ids, submit, wait_docker_matches_state,
                      wait_pool, wait_status)
from pool_manager.keys import Keys
from pool_manager.settings import load_settings
from stack import Stack
from workers.config import make_celery

pytestmark = pytest.mark.timeout(240)
REPLY_DELAY_S = 15  # a model slow to reply: the kill lands mid-relay
PROMISED_S = 60  # README: a job whose worker dies finishes within this of the kill


def _stack(redis_url, tmp_path_factory, name: str, pool: dict) -> Stack:
    stack = Stack(redis_url, name, tmp_path_factory.mktemp(name), {"image": "greenroom/chatbot:latest",
                                                                    "runtime": "docker"} | pool)
    defaults = load_settings()
    assert defaults.visibility_timeout_s == 560 and defaults.job_lease_s == 10  # what this test claims to use
    assert not any(k in stack.env for k in ("GREENROOM_CLAIM_TIMEOUT_S", "GREENROOM_CHAT_TIMEOUT_S",
                                            "GREENROOM_JOB_LEASE_S", "GREENROOM_RECONCILE_INTERVAL_S"))
    return stack.start("pool", "chat", "beat", "api")


@pytest.fixture(scope="module")
def slow_model(redis_url, docker_engine, tmp_path_factory, request):
    stack = _stack(redis_url, tmp_path_factory, "slowmodel", {
        "target_idle": 1, "max_total": 4, "env": {"BOOT_SECONDS": "1", "REPLY_DELAY_SECONDS": str(REPLY_DELAY_S)}})
    yield stack
    stack.stop()
    if request.session.testsfailed:
        print(stack.logs())


@pytest.fixture(scope="module")
def empty_pool(redis_url, docker_engine, tmp_path_factory, request):
    stack = _stack(redis_url, tmp_path_factory, "emptypool", {
        "target_idle": 0, "max_total": 1, "env": {"BOOT_SECONDS": "3"}})
    yield stack
    stack.stop()
    if request.session.testsfailed:
        print(stack.logs())


def _deliveries(stack: Stack, job_id: str) -> dict:
    """The job's record as stored: how many deliveries took it, how often it was requeued."""
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        return client.hgetall(Keys(stack.deployment).job(job_id))
    finally:
        client.close()


def test_a_worker_killed_mid_relay_its_job_finishes_within_a_minute_and_answers_once(slow_model, docker_engine):
    with slow_model.client() as client:
        wait_pool(client, idle=1)
        events = JobEvents(slow_model)
        try:
            job_id = submit(client, "my name is Ada").json()["id"]
            wait_status(client, job_id, "running")
            claimed = client.get(f"/v1/sessions/{job_id}").json()["container"]
            slow_model.kill("chat", signal.SIGKILL)  # the whole worker, mid-relay
            clock = Stopwatch()
            slow_model.start_one("chat")
            job = poll_until_final(client, job_id, timeout=PROMISED_S + 30)
            finished = clock()
            wait_until(lambda: events.count(job_id, "succeeded"), 5, message="the success event")
            assert job["status"] == "succeeded", job
            assert finished < PROMISED_S, f"finished {finished:.1f}s after the kill"
            assert events.count(job_id, "succeeded") == 1, events.seen[job_id]
            meta = job["result"]["greenroom"]
            assert meta["container"] == claimed and meta["new_session"] is False  # its claim, no second one
            assert "nice to meet you, Ada" in job["result"]["choices"][0]["message"]["content"]
            record = _deliveries(slow_model, job_id)
            assert record["deliveries"] == "2" and record["requeued"] == "1", record
            assert state_ids(slow_model)["assigned"] == {claimed}
        finally:
            events.close()
        report("chat worker SIGKILL mid-relay, default settings", finished_after_kill_s=finished,
               reply_delay_s=REPLY_DELAY_S, transitions=events.seen[job_id])
        assert client.delete(f"/v1/sessions/{job_id}").json()["state"] == "closed"
        wait_pool(client, idle=1, assigned=0)
        wait_docker_matches_state(docker_engine, slow_model)


def test_a_duplicate_delivery_of_a_running_job_is_dropped(slow_model):
    """A second message for the same job (a late redelivery) while the first delivery
    lives neither relays nor answers: one reply, one 'succeeded', the model told once."""
    celery = make_celery(load_settings(redis_url=slow_model.redis_url))
    with slow_model.client() as client:
        wait_pool(client, idle=1)
        events = JobEvents(slow_model)
        try:
            job_id = submit(client, "hello once").json()["id"]
            wait_status(client, job_id, "running")
            kwargs = {"model": "chatbot", "messages": [{"role": "user", "content": "hello once"}]}
            celery.send_task("greenroom.chat", kwargs=kwargs, task_id=job_id, queue="greenroom.chat",
                             ignore_result=True)
            job = poll_until_final(client, job_id, timeout=60)
            assert job["status"] == "succeeded", job
            assert job["result"]["choices"][0]["message"]["content"].startswith("Turn 1:")
            wait_until(lambda: _deliveries(slow_model, job_id).get("deliveries"), 5)
            assert _deliveries(slow_model, job_id)["deliveries"] == "1"  # the duplicate never took it
            assert events.count(job_id, "succeeded") == 1 and events.count(job_id, "running") == 1
        finally:
            events.close()
        client.delete(f"/v1/sessions/{job_id}")


def test_a_worker_killed_while_its_job_waits_for_a_container_the_job_keeps_its_place(empty_pool, docker_engine):
    """A waiting job is parked in line, held by no worker: the kill costs it nothing. The
    container booting for it goes to it (a second delivery), with no requeue."""
    with empty_pool.client() as client:
        events = JobEvents(empty_pool)
        try:
            job_id = submit(client, "hello after a wait").json()["id"]
            waiting = wait_status(client, job_id, "waiting_for_container")
            assert waiting["position"] == 1
            empty_pool.kill("chat", signal.SIGKILL)
            clock = Stopwatch()
            empty_pool.start_one("chat")
            job = poll_until_final(client, job_id, timeout=PROMISED_S + 30)
            finished = clock()
            assert job["status"] == "succeeded", job
            assert finished < PROMISED_S, f"finished {finished:.1f}s after the kill"
            wait_until(lambda: events.count(job_id, "succeeded"), 5, message="the success event")
            assert events.count(job_id, "succeeded") == 1, events.seen[job_id]
            record = _deliveries(empty_pool, job_id)
            assert record["deliveries"] == "2" and "requeued" not in record, record
        finally:
            events.close()
        report("chat worker SIGKILL while waiting, default settings", finished_after_kill_s=finished,
               transitions=events.seen[job_id])
        client.delete(f"/v1/sessions/{job_id}")
        wait_pool(client, idle=0, assigned=0, warming=0)
        wait_docker_matches_state(docker_engine, empty_pool)
