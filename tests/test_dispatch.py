"""End to end: the real API over HTTP, real Celery workers, Redis and containers."""

import re
import time
import uuid

import httpx
import openai
import pytest
import redis

from conftest import wait_until
from bench import stack as bench_stack
from stack import TOKENS, Stack, chat, wait_for_pool
from pool_manager.settings import load_settings
from workers.config import make_celery

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(redis_url, docker_engine, tmp_path_factory, request):
    # Sessions of earlier tests stay open: none is closed to make room at max_total here
    # (test_pool.py tests that), so the tests below can count what they hold.
    pool = {"image": "greenroom/chatbot:latest", "command": ["python3", "images/chatbot/server.py"],
            "runtime": "docker", "target_idle": 2, "max_total": 20, "env": {"BOOT_SECONDS": "1"},
            "session_min_idle_s": 3600}
    running = Stack(redis_url, "dispatch", tmp_path_factory.mktemp("stack"), pool, claim_timeout_s=30,
                    chat_timeout_s=10, reconcile_interval_s=2, chat_wait_s=20,
                    tenant_overrides={"celery": bench_stack.UNLIMITED | {"submissions_per_second": 3}})
    running.start("pool", "chat", "beat", "api")
    yield running
    running.stop()
    if request.session.testsfailed:
        print(running.logs())


def replied(client: httpx.Client, text: str, session_id: str | None = None) -> dict:
    """A chat that must succeed: its job, checked."""
    job = chat(client, text, session_id=session_id)
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture
def acme(stack):
    with stack.client("acme") as client:
        wait_for_pool(client, idle=2)
        yield client


def test_submit_and_poll_gets_a_reply_from_a_warm_container(acme):
    job = chat(acme, "hello there")
    assert job["status"] == "succeeded", job
    reply = job["result"]
    assert reply["object"] == "chat.completion"
    assert 'you said "hello there"' in reply["choices"][0]["message"]["content"]
    meta = reply["greenroom"]
    assert meta["warm"] is True and meta["new_session"] is True
    assert meta["container"].startswith("gr-chatbot-")
    assert set(meta["timings"]) == {"queued_s", "waited_for_container_s", "in_container_s", "total_s"}
    assert meta["timings"]["total_s"] >= meta["timings"]["in_container_s"] > 0


def test_submit_answers_202_with_location_and_unknown_id_is_404(acme):
    submitted = acme.post("/v1/jobs", json={"model": "chatbot", "messages": [{"role": "user", "content": "hi"}]})
    assert submitted.status_code == 202
    assert submitted.headers["Location"] == f"/v1/jobs/{submitted.json()['id']}"
    assert submitted.json()["status"] == "queued"
    assert acme.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404


def test_long_poll_returns_as_soon_as_the_job_ends(acme):
    submitted = acme.post("/v1/jobs", json={"model": "chatbot", "messages": [{"role": "user", "content": "hi"}]})
    began = time.monotonic()
    job = acme.get(f"/v1/jobs/{submitted.json()['id']}", params={"wait": 30}).json()
    assert job["status"] == "succeeded"
    assert time.monotonic() - began < 25  # returned on completion, not at the end of the wait


def test_a_session_keeps_its_container_and_memory(acme):
    first = replied(acme, "my name is Ada")
    session = first["session_id"]
    second = replied(acme, "what is my name?", session_id=session)
    assert second["result"]["choices"][0]["message"]["content"] == "Your name is Ada."
    assert second["result"]["greenroom"]["container"] == first["result"]["greenroom"]["container"]
    assert second["result"]["greenroom"]["new_session"] is False
    other = replied(acme, "what is my name?")  # a new session: another container, no memory of Ada
    assert other["result"]["greenroom"]["container"] != first["result"]["greenroom"]["container"]
    assert other["result"]["choices"][0]["message"]["content"] == "I don't know your name yet."


def test_closing_a_session_removes_its_container_and_the_pool_refills(acme, docker_engine):
    job = replied(acme, "hello")
    session, container = job["session_id"], job["result"]["greenroom"]["container"]
    assert acme.get(f"/v1/sessions/{session}").json()["state"] == "active"
    closed = acme.delete(f"/v1/sessions/{session}")
    assert closed.status_code == 200 and closed.json()["state"] == "closed"
    assert container not in [c.name for c in docker_engine.containers.list(all=True)]
    refused = acme.post("/v1/jobs", json={"model": "chatbot", "session_id": session,
                                          "messages": [{"role": "user", "content": "still there?"}]})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "session_closed"
    wait_for_pool(acme, idle=2)


def test_send_task_gets_a_reply_and_its_job_becomes_visible(stack, acme):
    client = make_celery(load_settings(redis_url=stack.redis_url))  # a backend service's own app
    result = client.send_task("greenroom.chat", kwargs={"model": "chatbot", "messages": [
        {"role": "user", "content": "from a backend"}]}, queue="greenroom.chat")
    record = result.get(timeout=30)
    assert record["status"] == "succeeded"
    assert 'you said "from a backend"' in record["result"]["choices"][0]["message"]["content"]
    with stack.client("admin") as admin:  # send_task jobs belong to tenant "celery": admins see them
        assert admin.get(f"/v1/jobs/{result.id}").json()["status"] == "succeeded"
    assert acme.get(f"/v1/jobs/{result.id}").status_code == 404


def test_send_task_jobs_over_their_tenants_limit_fail_with_its_code(stack, acme):
    """send_task jobs belong to tenant "celery", held here to 3 submissions a second."""
    client = make_celery(load_settings(redis_url=stack.redis_url))
    results = [client.send_task("greenroom.chat", queue="greenroom.chat", kwargs={
        "model": "chatbot", "messages": [{"role": "user", "content": f"burst {n}"}]}) for n in range(8)]
    outcomes = []
    for result in results:
        try:
            outcomes.append(result.get(timeout=60)["status"])
        except Exception as exc:  # a failed job raises through result.get
            outcomes.append(str(exc))
    refused = [o for o in outcomes if o.startswith("limit_exceeded")]
    assert refused and "succeeded" in outcomes, outcomes
    assert "submissions per second" in refused[0]
    with stack.client("admin") as admin:
        records = [admin.get(f"/v1/jobs/{r.id}").json() for r in results]
    assert sum(r["status"] == "failed" and r["error"]["code"] == "limit_exceeded" for r in records) == len(refused)
    for record in records:
        if record["status"] == "succeeded":
            client.send_task("greenroom.pool.close_session", kwargs={"session_id": record["session_id"]},
                             queue="greenroom.pool").get(timeout=30)


def test_two_tenants_sessions_of_one_name_never_meet(stack, acme):
    """acme's and globex's `support-42`, and a send_task job's of the same name: three
    conversations on three containers, none reading another's memory."""
    name = f"support-{uuid.uuid4().hex[:6]}"
    celery = make_celery(load_settings(redis_url=stack.redis_url))
    backend = celery.send_task("greenroom.chat", queue="greenroom.chat", kwargs={
        "model": "chatbot", "session_id": name, "messages": [{"role": "user", "content": "my name is Celia"}]})
    assert backend.get(timeout=30)["status"] == "succeeded"
    first = replied(acme, "my name is Ada", session_id=name)
    with stack.client("globex") as globex:
        other = replied(globex, "what is my name?", session_id=name)
        assert other["result"]["choices"][0]["message"]["content"] == "I don't know your name yet."
        globex.delete(f"/v1/sessions/{name}")
    again = replied(acme, "what is my name?", session_id=name)
    assert again["result"]["choices"][0]["message"]["content"] == "Your name is Ada."
    containers = {first["result"]["greenroom"]["container"], other["result"]["greenroom"]["container"],
                  backend.get(timeout=5)["result"]["greenroom"]["container"]}
    assert len(containers) == 3
    assert again["result"]["greenroom"]["container"] == first["result"]["greenroom"]["container"]
    acme.delete(f"/v1/sessions/{name}")
    assert celery.send_task("greenroom.pool.close_session", kwargs={"session_id": name},
                            queue="greenroom.pool").get(timeout=30) is True


def test_openai_client_against_chat_completions(stack, acme):
    client = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=TOKENS["acme"], max_retries=0)
    first = client.chat.completions.create(model="chatbot", messages=[{"role": "user", "content": "my name is Lin"}])
    assert first.choices[0].message.content.startswith("Turn 1")
    session = first.model_extra["greenroom"]["session_id"]
    second = client.chat.completions.create(model="chatbot", messages=[{"role": "user", "content": "what is my name"}],
                                            extra_body={"session_id": session})
    assert second.choices[0].message.content == "Your name is Lin."
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])


def test_drained_pool_jobs_wait_then_succeed_on_fresh_containers(stack, acme):
    with stack.client("admin") as admin:
        assert admin.patch("/v1/pools/chatbot", json={"target_idle": 0}).status_code == 200
        try:
            sessions = [replied(acme, f"hold {n}")["session_id"] for n in range(2)]  # take the 2 idle
            wait_for_pool(acme, idle=0, warming=0)
            submitted = acme.post("/v1/jobs", json={"model": "chatbot",
                                                    "messages": [{"role": "user", "content": "wait for me"}]})
            job_id = submitted.json()["id"]
            waiting = wait_until(lambda: (j := acme.get(f"/v1/jobs/{job_id}").json())["status"] ==
                                 "waiting_for_container" and j, 10, message="waiting_for_container")
            assert waiting["position"] == 1
            job = acme.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
            assert job["status"] == "succeeded"
            assert job["result"]["greenroom"]["warm"] is False
            assert job["result"]["greenroom"]["timings"]["waited_for_container_s"] > 0.5  # a boot
        finally:
            admin.patch("/v1/pools/chatbot", json={"target_idle": 2})
    for session in sessions:
        acme.delete(f"/v1/sessions/{session}")
    wait_for_pool(acme, idle=2)


def test_jobs_waiting_for_a_container_are_served_first_come_first_served(stack, acme):
    """Four new sessions wait at a full pool (room for 2 sessions beyond earlier tests'
    open ones); each freed slot goes to the head of the line, never to a later arrival
    (without the line, whichever waiting worker polls first wins)."""
    full = acme.get("/v1/pools/chatbot").json()["assigned"] + 2
    with stack.client("admin") as admin:
        assert admin.patch("/v1/pools/chatbot", json={"target_idle": 0, "max_total": full}).status_code == 200
        try:
            holders = [replied(acme, f"hold {n}")["session_id"] for n in range(2)]  # the 2 idle, now full
            line = []
            for position in range(1, 5):
                body = {"model": "chatbot", "messages": [{"role": "user", "content": f"in line {position}"}]}
                line.append(acme.post("/v1/jobs", json=body).json()["id"])
                wait_until(lambda: acme.get(f"/v1/jobs/{line[-1]}").json().get("position") == position, 10,
                           message=f"job {position} in line")
            to_close, served = list(holders), []
            while len(served) < len(line):
                acme.delete(f"/v1/sessions/{to_close.pop(0)}")  # frees a slot: one boot, one claim
                job = wait_until(lambda: next((j for job_id in line if job_id not in served
                                               and (j := acme.get(f"/v1/jobs/{job_id}").json())["status"]
                                               not in ("queued", "waiting_for_container")), None),
                                 20, interval=0.05, message="a job to leave the line")
                served.append(job["id"])
                to_close.append(job["session_id"])
                assert job["status"] in ("running", "succeeded"), job
            assert served == line
            for job_id in line:
                assert acme.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()["status"] == "succeeded"
        finally:
            admin.patch("/v1/pools/chatbot", json={"target_idle": 2, "max_total": 20})
    for session in to_close:
        acme.delete(f"/v1/sessions/{session}")
    wait_for_pool(acme, idle=2, assigned=full - 2)


def test_a_claim_starts_its_replacement_without_waiting_for_beat(stack, acme, docker_engine):
    """Beat is stopped for this test, and every reconcile sent before is done: only the
    claim's own request can start the replacement."""
    wait_for_pool(acme, idle=2, warming=0)
    stack.kill("beat")
    try:
        wait_until(lambda: _maintenance_idle(stack), 30, interval=0.1, message="every reconcile sent so far done")
        owner = {"label": f"greenroom.owner={stack.deployment}"}
        before = {c.name for c in docker_engine.containers.list(all=True, filters=owner)}
        job = replied(acme, "take one")
        assert job["result"]["greenroom"]["warm"] and job["result"]["greenroom"]["container"] in before, job
        started = wait_until(lambda: {c.name for c in docker_engine.containers.list(all=True, filters=owner)} - before,
                             30, interval=0.05, message="the replacement")
        assert len(started) == 1, started
        wait_for_pool(acme, idle=2, warming=0)
    finally:
        stack.start_one("beat")
    acme.delete(f"/v1/sessions/{job['session_id']}")


def _maintenance_idle(stack: Stack) -> bool:
    """No message waits on the pool queue, and the pool worker finished every one it took."""
    with redis.Redis.from_url(stack.redis_url) as broker:
        if broker.llen("greenroom.pool"):
            return False
    log = (stack.folder / "pool.log").read_text(errors="replace")
    taken = re.findall(r"Task (greenroom\.pool\.\w+)\[([^]]+)\] received", log)
    done = set(re.findall(r"Task (greenroom\.pool\.\w+)\[([^]]+)\] (?:succeeded|failed|raised)", log))
    return set(taken) <= done


def test_metrics_gather_what_every_process_recorded(stack, acme):
    """Each count grows by what this one chat did (earlier tests of the module count too):
    the chat worker's claim and job, the pool worker's boot of the replacement."""
    wait_for_pool(acme, idle=2, warming=0)
    before = _samples(stack)
    replied(acme, "count me")
    boots = 'greenroom_boot_seconds_count{pool="chatbot"}'
    after = wait_until(lambda: (now := _samples(stack))[boots] > before[boots] and now, 30, message="the replacement")
    wait_for_pool(acme, idle=2, warming=0)

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0)

    assert grew('greenroom_claims_total{pool="chatbot",served="warm"}') == 1  # recorded by the chat worker
    assert grew('greenroom_jobs_total{outcome="succeeded",pool="chatbot"}') == 1
    assert grew('greenroom_job_latency_seconds_count{pool="chatbot"}') == 1
    assert grew(boots) == 1  # recorded by the pool worker
    assert after['greenroom_boot_seconds_bucket{le="+Inf",pool="chatbot"}'] == after[boots]
    assert grew('greenroom_reconcile_duration_seconds_count{pool="chatbot"}') >= 1
    assert after['greenroom_target_idle{pool="chatbot"}'] == 2
    assert 'greenroom_containers{pool="chatbot",state="idle"}' in after
    assert 'greenroom_queue_depth{queue="greenroom.chat"}' in after


def _samples(stack: Stack) -> dict[str, float]:
    text = httpx.get(f"{stack.api_url}/metrics").text  # public, like health
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_a_failed_job_raises_through_result_get(stack):
    client = make_celery(load_settings(redis_url=stack.redis_url))
    result = client.send_task("greenroom.chat", queue="greenroom.chat", kwargs={
        "model": "no-such-model", "messages": [{"role": "user", "content": "hello"}]})
    with pytest.raises(Exception) as raised:
        result.get(timeout=30)
    assert type(raised.value).__name__ == "ChatFailed", repr(raised.value)
    assert str(raised.value).startswith("unknown_model: "), repr(raised.value)
    with stack.client("admin") as admin:
        assert admin.get(f"/v1/jobs/{result.id}").json()["error"]["code"] == "unknown_model"


def test_a_job_sent_again_after_it_ended_returns_its_stored_result(stack):
    """A redelivery of a finished job (sent again under its id, its first result removed
    from Celery's backend so that only the second run can answer): the stored record, and
    the model is not told again (the session's next message is its second turn)."""
    client = make_celery(load_settings(redis_url=stack.redis_url))
    kwargs = {"model": "chatbot", "messages": [{"role": "user", "content": "my name is Ada"}]}
    first = client.send_task("greenroom.chat", queue="greenroom.chat", kwargs=kwargs)
    record = first.get(timeout=30)
    assert record["status"] == "succeeded", record
    first.forget()
    again = client.send_task("greenroom.chat", queue="greenroom.chat", kwargs=kwargs, task_id=first.id)
    assert again.get(timeout=30) == record
    follow_up = client.send_task("greenroom.chat", queue="greenroom.chat", kwargs={
        "model": "chatbot", "session_id": record["session_id"], "messages": [{"role": "user", "content": "hi"}]})
    assert follow_up.get(timeout=30)["result"]["choices"][0]["message"]["content"].startswith("Turn 2:")
    assert client.send_task("greenroom.pool.close_session", kwargs={"session_id": record["session_id"]},
                            queue="greenroom.pool").get(timeout=30) is True
