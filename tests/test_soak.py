"""A bounded soak: mixed traffic (new sessions, follow-ups, closes, cancellations) against
the real stack with a small pool, so that jobs wait. Afterwards every accepted job is
final, none twice, and the containers are exactly what the pool state says.

GREENROOM_SOAK_SECONDS sets the duration (45 s by default); `pytest -s` prints the figures."""

import os
import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from faultkit import (JobEvents, docker_names, poll_until_final, report, submit, wait_docker_matches_state,
                      wait_pool)
from stack import Stack

SOAK_S = float(os.environ.get("GREENROOM_SOAK_SECONDS", "45"))
CLIENTS = 4
SESSIONS_PER_CLIENT = 2  # 4 x 2 = max_total: a client waiting for a claim never waits on itself
pytestmark = pytest.mark.timeout(SOAK_S + 240)


@dataclass
class Job:
    id: str
    kind: str
    submitted: float
    final: dict | None = None
    ended: float = 0.0
    cancel_answer: int | None = None  # HTTP status of DELETE /v1/jobs/<id>, for a cancelled one


@dataclass
class Tally:
    jobs: list[Job] = field(default_factory=list)
    sessions_opened: int = 0
    sessions_closed: int = 0
    cancels: Counter = field(default_factory=Counter)  # HTTP status of DELETE /v1/jobs/<id>
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    open_sessions: set[str] = field(default_factory=set)


@pytest.fixture
def stack(redis_url, docker_engine, tmp_path, request):
    pool = {"image": "greenroom/chatbot:latest", "runtime": "docker", "target_idle": 2, "max_total": 8,
            "env": {"BOOT_SECONDS": "1", "REPLY_DELAY_SECONDS": "0.3"}}
    running = Stack(redis_url, "soak", tmp_path, pool, claim_timeout_s=30, chat_timeout_s=10,
                    reconcile_interval_s=2)
    running.start("pool", "chat", "beat", "api")
    yield running
    running.stop()
    call = getattr(request.node, "report_call", None)
    if call is None or call.failed:
        print(running.logs())


def test_a_mixed_soak_loses_nothing_runs_nothing_twice_and_leaks_nothing(stack, docker_engine):
    with stack.client() as client:
        wait_pool(client, idle=2)
    events = JobEvents(stack)
    tally = Tally()
    began = time.monotonic()
    try:
        clients = [threading.Thread(target=_client, args=(stack, began + SOAK_S, tally, seed)) for seed in
                   range(CLIENTS)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(SOAK_S + 120)
        assert not any(thread.is_alive() for thread in clients)
        elapsed = time.monotonic() - began
        with stack.client() as client:
            for job in tally.jobs:
                if job.final is None:  # its client stopped on an error (recorded in tally.errors)
                    job.final = poll_until_final(client, job.id, timeout=60)
            assert not tally.errors, tally.errors
            _assert_it_all_happened(tally)
            ids = [job.id for job in tally.jobs]
            assert len(ids) == len(set(ids)), "a job id was handed out twice"
            for job in tally.jobs:  # succeeded, or cancelled exactly when its cancel was accepted
                expected = "cancelled" if job.cancel_answer == 200 else "succeeded"
                assert job.final["status"] == expected, (job, job.final)
            succeeded_events = {job.id: events.count(job.id, "succeeded") for job in tally.jobs}
            assert all(n <= 1 for n in succeeded_events.values()), succeeded_events  # no job succeeded twice
            assert all(succeeded_events[job.id] == 1 for job in tally.jobs if job.final["status"] == "succeeded")
            ids_by_state = wait_docker_matches_state(docker_engine, stack)
            assert len(ids_by_state["assigned"]) == len(tally.open_sessions)
            for session in list(tally.open_sessions):
                assert client.delete(f"/v1/sessions/{session}").json()["state"] in ("closed", "broken")
            wait_pool(client, 60, assigned=0, idle=2, warming=0)
            wait_docker_matches_state(docker_engine, stack)
    finally:
        events.close()
    stack.stop()
    assert docker_names(docker_engine, stack) == set()
    _report(tally, elapsed)


def _client(stack: Stack, until: float, tally: Tally, seed: int) -> None:
    """One user: opens up to two sessions, talks in them, closes them, cancels some jobs."""
    rng = random.Random(seed)
    mine: list[str] = []
    with stack.client(timeout=30) as client:
        while time.monotonic() < until:
            action = rng.choices(["new", "follow_up", "close", "cancel"], weights=[3, 4, 2, 2])[0]
            if action in ("new", "cancel") and len(mine) >= SESSIONS_PER_CLIENT:
                action = "close"
            if action in ("follow_up", "close") and not mine:
                action = "new"
            try:
                _act(client, action, mine, tally, rng)
            except Exception as exc:  # recorded, and fails the test at the end
                with tally.lock:
                    tally.errors.append(f"{action}: {exc!r}")
                return


def _act(client, action: str, mine: list[str], tally: Tally, rng: random.Random) -> None:
    if action == "close":
        session = mine.pop(rng.randrange(len(mine)))
        closed = client.delete(f"/v1/sessions/{session}")
        assert closed.status_code in (200, 202), closed.text
        with tally.lock:
            tally.sessions_closed += 1
            tally.open_sessions.discard(session)
        return
    session = rng.choice(mine) if action == "follow_up" else None
    job = _submit(client, action, tally, session)
    if action == "cancel":
        cancelled = client.delete(f"/v1/jobs/{job.id}")
        assert cancelled.status_code in (200, 409), cancelled.text
        job.cancel_answer = cancelled.status_code
        with tally.lock:
            tally.cancels[cancelled.status_code] += 1
    job.final = poll_until_final(client, job.id, timeout=60)
    job.ended = time.monotonic()
    if session is None and job.final["status"] == "succeeded":  # a new session, now holding a container
        mine.append(job.final["session_id"])
        with tally.lock:
            tally.sessions_opened += 1
            tally.open_sessions.add(job.final["session_id"])
    elif job.final["status"] == "failed":
        raise AssertionError(f"job failed: {job.final}")


def _submit(client, kind: str, tally: Tally, session: str | None) -> Job:
    submitted = time.monotonic()
    response = submit(client, f"{kind} at {submitted:.3f}", session_id=session)
    assert response.status_code == 202, response.text
    job = Job(response.json()["id"], kind, submitted)
    with tally.lock:
        tally.jobs.append(job)
    return job


def _assert_it_all_happened(tally: Tally) -> None:
    """The soak did what it is for (a soak too short for that fails rather than passing
    on nothing): every kind of job was sent, cancels were accepted, sessions were opened
    and closed, and some new sessions waited for a container."""
    kinds = Counter(job.kind for job in tally.jobs)
    assert kinds["new"] and kinds["follow_up"] and kinds["cancel"], kinds
    assert tally.cancels[200], tally.cancels  # (a cancel that comes too late, 409, is allowed, not required)
    assert tally.sessions_opened and tally.sessions_closed, (tally.sessions_opened, tally.sessions_closed)
    waited = [job for job in tally.jobs if job.final["status"] == "succeeded"
              and job.final["result"]["greenroom"]["timings"]["waited_for_container_s"] > 0]
    assert waited, "no job waited for a container"


def _report(tally: Tally, elapsed: float) -> None:
    done = [job for job in tally.jobs if job.final["status"] == "succeeded"]
    latency = sorted(job.ended - job.submitted for job in done)
    waits = sorted(w for job in done if (w := job.final["result"]["greenroom"]["timings"]["waited_for_container_s"]))
    report("soak", seconds=elapsed, clients=CLIENTS, jobs=len(tally.jobs), jobs_per_s=len(tally.jobs) / elapsed,
           by_final_state=dict(Counter(job.final["status"] for job in tally.jobs)),
           by_kind=dict(Counter(job.kind for job in tally.jobs)), cancel_answers=dict(tally.cancels),
           sessions_opened=tally.sessions_opened, sessions_closed=tally.sessions_closed,
           latency_p50_s=_percentile(latency, 50), latency_p95_s=_percentile(latency, 95),
           waited_for_a_container=len(waits), wait_p50_s=_percentile(waits, 50), wait_p95_s=_percentile(waits, 95))


def _percentile(values: list[float], pct: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]
