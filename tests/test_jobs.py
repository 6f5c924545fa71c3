"""Job records and their long polls, against the test session's redis-server."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import pool_manager.jobs
from conftest import wait_until
from pool_manager.errors import LimitExceeded
from pool_manager.jobs import JobStore
from pool_manager.settings import TenantLimits
from pool_manager.state import connect_redis


@pytest.fixture
def jobs(redis_url, deployment):
    client = connect_redis(redis_url)
    store = JobStore(client, deployment)
    yield store
    store.events.close()
    client.close()


POLL_S = 40  # a long poll's timeout, where the test needs it woken well before
ROOMY = TenantLimits(sessions=1000, jobs_in_flight=1000, submissions_per_second=1000)


def create(jobs: JobStore, job_id: str, tenant: str = "acme", request: dict | None = None,
           limits: TenantLimits = ROOMY, new_session: bool = True) -> dict | None:
    return jobs.create(job_id, tenant=tenant, model="chatbot", session_id=job_id, request=request or {},
                       limits=limits, new_session=new_session)


def pubsub_clients(jobs: JobStore) -> int:
    return sum(1 for c in jobs.redis.client_list() if int(c["psub"]) or int(c["sub"]))


def test_create_returns_the_record_once(jobs):
    record = create(jobs, "j1", tenant="acme", request={})
    assert record == jobs.get("j1")
    assert create(jobs, "j1", tenant="globex", request={}) is None
    assert jobs.get("j1")["tenant"] == "acme"


def test_a_long_poll_is_woken_when_its_job_ends(jobs, monkeypatch):
    """The job ends while the poll waits (it has read the job unfinished); the job's event
    wakes it. The periodic re-read is pushed out past the poll's timeout, so nothing else
    could end the wait before then."""
    monkeypatch.setattr(pool_manager.jobs, "REREAD_S", 600)
    create(jobs, "j2", tenant="acme", request={})
    seen, read = [], jobs.get
    monkeypatch.setattr(jobs, "get", lambda job_id: seen.append(job := read(job_id)) or job)
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(jobs.wait, "j2", POLL_S)
        wait_until(lambda: seen and seen[0]["status"] == "queued" and "j2" in jobs.events._waiters, 5,
                   message="the poll waiting, having read the job queued")
        assert not poll.done()
        jobs.succeed("j2", {"answer": 42})
        job = poll.result(timeout=POLL_S / 2)  # woken, not timed out
    assert job["status"] == "succeeded" and job["result"] == {"answer": 42}


def test_a_long_poll_times_out_with_the_job_as_it_stands(jobs):
    create(jobs, "j3", tenant="acme", request={})
    assert jobs.wait("j3", 0.3)["status"] == "queued"
    assert jobs.wait("missing", 0.3) is None


def test_concurrent_long_polls_share_one_subscription(jobs):
    """Twenty polls in one process: one pub/sub connection, not twenty; each poll
    wakes for its own job."""
    before = pubsub_clients(jobs)
    ids = [f"many-{n}" for n in range(20)]
    for job_id in ids:
        create(jobs, job_id, tenant="acme", request={})
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
    create(jobs, "j4", tenant="acme", request={"model": "chatbot"})
    assert jobs.take("j4", "first", lease_s=0.5)[0] == "taken"
    assert jobs.take("j4", "second", lease_s=0.5)[0] == "held"  # a duplicate while the first lives
    assert jobs.renew("j4", "first", lease_s=0.5)
    sent = []
    assert jobs.requeue_lapsed(lambda job_id, kwargs: sent.append((job_id, kwargs))) == []  # still live
    time.sleep(0.6)  # the first delivery's worker died: no renewal
    assert jobs.requeue_lapsed(lambda job_id, kwargs: sent.append((job_id, kwargs))) == ["j4"]
    assert jobs.requeue_lapsed(lambda job_id, kwargs: sent.append((job_id, kwargs))) == []  # once
    assert sent == [("j4", {"model": "chatbot"})]
    assert jobs.take("j4", "second", lease_s=5)[0] == "taken"
    assert not jobs.renew("j4", "first", lease_s=5)  # the first is fenced out ...
    assert not jobs.succeed("j4", {"from": "first"}, delivery="first")  # ... and cannot answer
    assert jobs.succeed("j4", {"from": "second"}, delivery="second")
    assert jobs.get("j4")["result"] == {"from": "second"}
    assert "request" not in jobs.get("j4") and not jobs.redis.zscore(jobs.leases, "j4")
    assert jobs.take("j4", "third", lease_s=5)[0] == "final"


def test_a_requeue_that_cannot_send_is_retried(jobs):
    create(jobs, "j5", tenant="acme", request={"model": "chatbot"})
    jobs.take("j5", "dead", lease_s=0.1)
    time.sleep(0.2)

    def broker_down(job_id, kwargs):
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        jobs.requeue_lapsed(broker_down)
    assert jobs.requeue_lapsed(lambda job_id, kwargs: None) == ["j5"]


def test_a_tenant_over_a_limit_is_refused_naming_it_and_others_are_not(jobs):
    limits = TenantLimits(sessions=2, jobs_in_flight=3, submissions_per_second=100)
    create(jobs, "s1", limits=limits)
    create(jobs, "s2", limits=limits)
    with pytest.raises(LimitExceeded) as refused:
        create(jobs, "s3", limits=limits)  # a third new session
    assert (refused.value.limit, refused.value.retry_after_s) == ("sessions", 5)
    create(jobs, "f1", limits=limits, new_session=False)  # a follow-up needs no new session
    with pytest.raises(LimitExceeded, match="3 jobs in flight"):
        create(jobs, "f2", limits=limits, new_session=False)
    assert create(jobs, "other", tenant="globex", limits=limits)  # another tenant's counts are its own
    jobs.succeed("f1", {})  # a job that ends leaves the count
    assert create(jobs, "f3", limits=limits, new_session=False)
    assert jobs.get("s3") is None  # a refused job leaves no record


def test_submissions_per_second_are_counted_per_tenant(jobs):
    limits = TenantLimits(submissions_per_second=3, jobs_in_flight=100, sessions=100)
    time.sleep(1 - time.time() % 1)  # the start of a second: all within one window
    for n in range(3):
        create(jobs, f"r{n}", limits=limits)
    with pytest.raises(LimitExceeded) as refused:
        create(jobs, "r3", limits=limits)
    assert (refused.value.limit, refused.value.retry_after_s) == ("submissions_per_second", 1)
    time.sleep(1.1)
    assert create(jobs, "r4", limits=limits)
