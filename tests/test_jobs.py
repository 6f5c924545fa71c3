"""Job records and their long polls, against the test session's redis-server."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import wait_until
from pool_manager.jobs import JobStore
from pool_manager.state import connect_redis


@pytest.fixture
def jobs(redis_url, deployment):
    client = connect_redis(redis_url)
    store = JobStore(client, deployment)
    yield store
    store.events.close()
    client.close()


def pubsub_clients(jobs: JobStore) -> int:
    return sum(1 for c in jobs.redis.client_list() if int(c["psub"]) or int(c["sub"]))


def test_create_returns_the_record_once(jobs):
    record = jobs.create("j1", tenant="acme", model="chatbot", session_id="j1", request={})
    assert record == jobs.get("j1")
    assert jobs.create("j1", tenant="globex", model="chatbot", session_id="j1", request={}) is None
    assert jobs.get("j1")["tenant"] == "acme"


def test_a_long_poll_ends_when_its_job_does(jobs):
    jobs.create("j2", tenant="acme", model="chatbot", session_id="j2", request={})
    threading.Timer(0.3, jobs.succeed, args=("j2", {"answer": 42})).start()
    began = time.monotonic()
    job = jobs.wait("j2", 10)
    assert job["status"] == "succeeded" and job["result"] == {"answer": 42}
    assert time.monotonic() - began < 5  # woken by the event, well before the timeout


def test_a_long_poll_times_out_with_the_job_as_it_stands(jobs):
    jobs.create("j3", tenant="acme", model="chatbot", session_id="j3", request={})
    assert jobs.wait("j3", 0.3)["status"] == "queued"
    assert jobs.wait("missing", 0.3) is None


def test_concurrent_long_polls_share_one_subscription(jobs):
    """Twenty polls in one process: one pub/sub connection, not twenty; each poll
    wakes for its own job."""
    before = pubsub_clients(jobs)
    ids = [f"many-{n}" for n in range(20)]
    for job_id in ids:
        jobs.create(job_id, tenant="acme", model="chatbot", session_id=job_id, request={})
    with ThreadPoolExecutor(len(ids)) as pool:
        polls = [pool.submit(jobs.wait, job_id, 20) for job_id in ids]
        wait_until(lambda: len(jobs.events._waiters) == len(ids), 5, message="every poll waiting")
        assert pubsub_clients(jobs) - before == 1
        for job_id in ids:
            jobs.succeed(job_id, {"id": job_id})
        results = [poll.result(timeout=10) for poll in polls]
    assert [job["result"]["id"] for job in results] == ids
    assert not jobs.events._waiters  # every poll unregistered


def test_one_delivery_at_a_time_holds_a_job_and_a_lapsed_lease_is_sent_again_once(jobs):
    jobs.create("j4", tenant="acme", model="chatbot", session_id="j4", request={"model": "chatbot"})
    assert jobs.take("j4", "first", lease_s=0.5) == "taken"
    assert jobs.take("j4", "second", lease_s=0.5) == "held"  # a duplicate while the first lives
    assert jobs.renew("j4", "first", lease_s=0.5)
    sent = []
    assert jobs.requeue_lapsed(lambda job_id, kwargs: sent.append((job_id, kwargs))) == []  # still live
    time.sleep(0.6)  # the first delivery's worker died: no renewal
    assert jobs.requeue_lapsed(lambda job_id, kwargs: sent.append((job_id, kwargs))) == ["j4"]
    assert jobs.requeue_lapsed(lambda job_id, kwargs: sent.append((job_id, kwargs))) == []  # once
    assert sent == [("j4", {"model": "chatbot"})]
    assert jobs.take("j4", "second", lease_s=5) == "taken"
    assert not jobs.renew("j4", "first", lease_s=5)  # the first is fenced out ...
    assert not jobs.succeed("j4", {"from": "first"}, delivery="first")  # ... and cannot answer
    assert jobs.succeed("j4", {"from": "second"}, delivery="second")
    assert jobs.get("j4")["result"] == {"from": "second"}
    assert "request" not in jobs.get("j4") and not jobs.redis.zscore(jobs.leases, "j4")
    assert jobs.take("j4", "third", lease_s=5) == "final"


def test_a_requeue_that_cannot_send_is_retried(jobs):
    jobs.create("j5", tenant="acme", model="chatbot", session_id="j5", request={"model": "chatbot"})
    jobs.take("j5", "dead", lease_s=0.1)
    time.sleep(0.2)

    def broker_down(job_id, kwargs):
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        jobs.requeue_lapsed(broker_down)
    assert jobs.requeue_lapsed(lambda job_id, kwargs: None) == ["j5"]
