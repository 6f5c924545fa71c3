"""Faults in the stack's own machinery: Redis restarted under load (with persistence on),
two beats and two maintenance workers reconciling at once. Each test prints what it saw."""

import random
import re
import threading
import time

import httpx
import pytest
import redis

from conftest import RedisServer, free_port, wait_until
from faultkit import (DockerEvents, Programs, Stopwatch, poll_until_final, read_job, report, state_ids, submit,
                      wait_docker_matches_state, wait_pool, wait_status)
from pool_manager.keys import Keys
from stack import Stack, chat

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def durable_redis(tmp_path):
    server = RedisServer(tmp_path / "redis", durable=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stopped_after(request):
    """Stacks (and programs) of one test: stopped afterwards, their logs shown on failure."""
    stacks, programs = [], []
    yield stacks, programs
    for kit in programs:
        kit.stop_all()
    call = getattr(request.node, "report_call", None)
    for stack in stacks:
        stack.stop()
        if call is None or call.failed:
            print(stack.logs())


def durable_stack(server: RedisServer, folder, reply_delay_s: float, **settings) -> Stack:
    pool = {"image": "greenroom/chatbot:latest", "runtime": "docker", "target_idle": 2, "max_total": 8,
            "env": {"BOOT_SECONDS": "1", "REPLY_DELAY_SECONDS": str(reply_delay_s)}}
    return Stack(server.url, "redis", folder, pool, claim_timeout_s=30, chat_timeout_s=5, **settings)


def restart(server: RedisServer) -> Stopwatch:
    """SIGTERM, then the same server again on the same port and files; the clock runs
    from the moment it went down."""
    server.stop()
    clock = Stopwatch()
    time.sleep(0.5)
    server.start()
    return clock


def _submit_until_accepted(client: httpx.Client, accepted: list, refused: list, text: str,
                           session_id: str | None = None) -> None:
    """Submit, retrying (for at most 30 s) while the API cannot take it, as a client would."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            response = submit(client, text, session_id=session_id)
        except httpx.TransportError as exc:
            refused.append(type(exc).__name__)
        else:
            if response.status_code == 202:
                accepted.append(response.json()["id"])
                return
            assert response.status_code >= 500, response.text
            refused.append(response.status_code)
        time.sleep(0.2)
    raise AssertionError(f"no submission accepted in 30 s: {refused}")


def _submit_round_robin(stack: Stack, count: int, accepted: list, refused: list) -> None:
    """Start four sessions, then follow them up in turn until `count` jobs are accepted,
    one every 0.3 s. A follow-up goes once its session's first job has a container (a
    session's messages are a conversation). A submission the API cannot take is retried."""
    with stack.client(timeout=15) as client:
        for n in range(4):
            _submit_until_accepted(client, accepted, refused, f"session {n}")
            time.sleep(0.3)
        sessions = list(accepted)
        wait_until(lambda: all((job := read_job(client, s)) and job["status"] not in ("queued", "waiting_for_container")
                               for s in sessions), 30, interval=0.1, message="the sessions' first jobs claimed")
        while len(accepted) < count:
            _submit_until_accepted(client, accepted, refused, f"message {len(accepted)}",
                                   sessions[len(accepted) % 4])
            time.sleep(0.3)


def test_a_redis_restart_with_jobs_in_flight_loses_no_accepted_job(durable_redis, docker_engine, tmp_path,
                                                                   stopped_after):
    """Jobs accepted before, during and after the restart all succeed; the pool state
    (kept in the append-only file) still names the containers; every worker reconnects
    on its own (celery 5.7 alone would die here: see workers/brokerfix.py)."""
    stack = durable_stack(durable_redis, tmp_path, 2, reconcile_interval_s=1)
    stopped_after[0].append(stack)
    stack.start("pool", "chat", "beat", "api")
    with stack.client(timeout=15) as client:
        wait_pool(client, idle=2)
        before = chat(client, "my name is Ada")
        assert before["status"] == "succeeded", before
        accepted, refused = [], []
        submitter = threading.Thread(target=_submit_round_robin, args=(stack, 12, accepted, refused))
        submitter.start()
        wait_until(lambda: accepted and (job := read_job(client, accepted[0])) and job["status"] == "running",
                   15, message="a job in flight")
        clock = restart(durable_redis)
        back = clock()
        submitter.join(60)
        _submit_until_accepted(client, accepted, refused, "what is my name?", before["session_id"])
        jobs = [poll_until_final(client, job_id, timeout=60) for job_id in accepted]
        all_final = clock()
        assert len(accepted) == 13
        assert [job["status"] for job in jobs] == ["succeeded"] * 13, jobs
        follow_up = jobs[-1]["result"]
        assert follow_up["choices"][0]["message"]["content"] == "Your name is Ada."  # its container, kept
        assert follow_up["greenroom"]["container"] == before["result"]["greenroom"]["container"]
        wait_pool(client, 60, idle=2, assigned=5)  # Ada's session and four new ones
        pool_back = clock()
        wait_docker_matches_state(docker_engine, stack)
        assert all(process.poll() is None for process in stack.processes.values())
        report("redis restart", accepted=len(accepted), final=sorted({job["status"] for job in jobs}),
               refused=refused, redis_back_s=back, all_jobs_final_s=all_final, pool_back_s=pool_back)


def test_a_job_parked_in_line_survives_a_redis_restart(durable_redis, docker_engine, tmp_path, stopped_after):
    """A job waiting for a container is held by no worker: it is parked in Redis (kept in
    the append-only file). Redis restarts while it waits; the container booting for it
    goes to it once ready, and it succeeds, sent again once (handed), never requeued."""
    pool = {"image": "greenroom/chatbot:latest", "runtime": "docker", "target_idle": 0, "max_total": 1,
            "env": {"BOOT_SECONDS": "6"}}
    stack = Stack(durable_redis.url, "parked", tmp_path, pool, claim_timeout_s=60, reconcile_interval_s=1)
    stopped_after[0].append(stack)
    stack.start("pool", "chat", "beat", "api")
    with stack.client(timeout=15) as client:
        job_id = submit(client, "hello after a restart").json()["id"]
        assert wait_status(client, job_id, "waiting_for_container")["position"] == 1
        clock = restart(durable_redis)
        job = poll_until_final(client, job_id, timeout=90)
        finished = clock()
        assert job["status"] == "succeeded", job
        with redis.Redis.from_url(stack.redis_url, decode_responses=True) as raw:
            record = raw.hgetall(Keys(stack.deployment).job(job_id))
        assert record["deliveries"] == "2" and "requeued" not in record, record
        client.delete(f"/v1/sessions/{job_id}")
        wait_pool(client, 60, idle=0, assigned=0, warming=0)
        wait_docker_matches_state(docker_engine, stack)
    report("job parked across a redis restart", finished_after_restart_s=finished)


def test_two_beats_and_two_pool_workers_never_overprovision_or_double_claim(
        redis_url, docker_engine, tmp_path, stopped_after):
    """Two beats send every reconcile twice and two maintenance workers run them: the
    passes still never start past max_total (Docker's own account of every container
    created and removed, not a sampled list) and never hand a container out twice."""
    max_total = 4
    pool = {"image": "greenroom/chatbot:latest", "runtime": "docker", "target_idle": 2, "max_total": max_total,
            "env": {"BOOT_SECONDS": "1"}}
    stack = Stack(redis_url, "twobeats", tmp_path, pool, reconcile_interval_s=0.5, claim_timeout_s=30,
                  chat_timeout_s=10)
    stopped_after[0].append(stack)
    events = DockerEvents(docker_engine, stack.deployment)  # from before the first container
    programs = Programs(stack)  # Stack keeps one process per name, and one beat schedule file
    stopped_after[1].append(programs)
    peaks, stop = {"state": 0, "samples": 0}, threading.Event()
    sampler = threading.Thread(target=_sample_state, args=(stack, peaks, stop))
    sessions, failures = [], []
    try:
        stack.start("pool", "chat", "beat", "api")
        programs.start("pool-b", "greenroom", "worker", "--queue", "pool", "--name", f"pool-b-{free_port()}@%h")
        programs.start("beat-b", "greenroom", "beat", GREENROOM_STATE_DIR=str(tmp_path / "beat-b"))
        with stack.client() as client:
            wait_pool(client, idle=2)
        sampler.start()
        clients = [threading.Thread(target=_open_and_close, args=(stack, time.monotonic() + 10, sessions, failures))
                   for _ in range(6)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
        with stack.client() as client:
            wait_pool(client, idle=2, assigned=0)
        wait_docker_matches_state(docker_engine, stack)
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join(10)
        events.close()
    assert not failures, failures
    assert events.peak() <= max_total, events.seen
    assert peaks["state"] <= max_total, peaks
    containers = [container for _, container, _ in sessions]
    assert len(set(containers)) == len(containers), sessions  # no recycling: a container serves one session
    # both beats sent reconciles and both maintenance workers ran passes, all the while
    alive = {"pool": stack.processes["pool"], "beat": stack.processes["beat"], **programs.running}
    assert all(process.poll() is None for process in alive.values()), {k: p.poll() for k, p in alive.items()}
    logs = {name: (stack.folder / f"{name}.log").read_text(errors="replace") for name in alive}
    for beat in ("beat", "beat-b"):
        assert logs[beat].count("Sending due task reconcile-pools") >= 2, beat
    for worker in ("pool", "pool-b"):
        assert re.search(r"Task greenroom\.pool\.reconcile\[[^]]+\] succeeded in [0-9.e-]+s: \{", logs[worker]), worker
    waited = sum(1 for _, _, warm in sessions if not warm)
    report("two beats, two pool workers", sessions=len(sessions), waited_for_a_container=waited,
           peak_containers=events.peak(), created=len(events.times("create")), peak_in_state=peaks["state"],
           state_samples=peaks["samples"], max_total=max_total)


def _sample_state(stack: Stack, peaks: dict, stop: threading.Event) -> None:
    """Containers in the pool's Redis state, sampled (Docker's count comes from its events)."""
    while not stop.is_set():
        peaks["state"] = max(peaks["state"], sum(len(ids) for ids in state_ids(stack).values()))
        peaks["samples"] += 1
        stop.wait(0.05)


def _open_and_close(stack: Stack, until: float, sessions: list, failures: list) -> None:
    """New sessions (a claim each), sometimes a follow-up, then a close, until time's up."""
    rng = random.Random()
    with stack.client() as client:
        while time.monotonic() < until:
            job = chat(client, "hello", wait=40)
            if job["status"] != "succeeded":
                failures.append(job)
                return
            meta = job["result"]["greenroom"]
            sessions.append((job["session_id"], meta["container"], meta["warm"]))
            if rng.random() < 0.5:
                again = chat(client, "again", session_id=job["session_id"], wait=40)
                if again["status"] != "succeeded" or again["result"]["greenroom"]["container"] != meta["container"]:
                    failures.append(again)
            closed = client.delete(f"/v1/sessions/{job['session_id']}")
            if closed.status_code != 200 or closed.json()["state"] != "closed":
                failures.append(closed.text)


def test_readyz_answers_at_once_while_redis_is_down(durable_redis, tmp_path, stopped_after):
    """A readiness probe gets its 503 inside a probe's timeout, not after the API's own
    client has ridden out the outage; and 200 again once Redis is back."""
    stack = durable_stack(durable_redis, tmp_path, 0)
    stopped_after[0].append(stack)
    stack.start("api")
    with httpx.Client(base_url=stack.api_url, timeout=3) as probe:
        assert probe.get("/readyz").status_code == 200
        durable_redis.stop()
        down = probe.get("/readyz")
        assert down.status_code == 503
        assert down.json() == {"status": "not_ready", "checks": {"redis": False, "broker": False}}
        durable_redis.start()
        assert probe.get("/readyz").json()["status"] == "ready"
