"""The relay's promises per session and per delivery, with ChatRelay run in this process
(Celery only carries the kwargs to it): real Redis, real model servers on the process
runtime, the real claim, lease and turn code. Jobs are served as send_task's are (tenant
celery; the relay writes their record)."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import wait_until
from pool_manager.jobs import JobStore
from pool_manager.relay import ChatRelay

pytestmark = pytest.mark.timeout(60)
POOL = "chatbot"


@pytest.fixture
def relay(make_manager):
    """build(settings=..., **pool spec) -> a ChatRelay over a filled pool of one idle server.
    Claims ask for no reconcile here: the tests run the passes they want."""
    relays = []

    def build(settings: dict | None = None, **spec) -> ChatRelay:
        manager = make_manager("process", settings=settings, **{"target_idle": 1} | spec)
        built = ChatRelay(manager, JobStore(manager.redis, manager.settings.deployment), lambda pool: None)
        relays.append(built)
        manager.reconcile(POOL)
        wait_until(lambda: manager.state.counts(POOL)["idle"] >= 1, 20, message="an idle server")
        return built

    yield build
    for built in relays:
        built.jobs.events.close()


def serve(relay: ChatRelay, job_id: str, text: str, session_id: str | None = None) -> dict:
    return relay.serve(job_id, POOL, [{"role": "user", "content": text}], session_id)


def reply(record: dict) -> str:
    assert record["status"] == "succeeded", record
    return record["result"]["choices"][0]["message"]["content"]


def in_container(record: dict) -> tuple[float, float]:
    """When the relay was in the container: the in-container time up to the job's end."""
    ended = float(record["finished_at"])
    return ended - record["result"]["greenroom"]["timings"]["in_container_s"], ended


def test_one_message_at_a_time_per_session(relay):
    """Two messages of one session sent at once reach its container one after the other
    (the reference server would serve them side by side: it is threaded)."""
    delay_s = 1.0
    chat = relay(env={"BOOT_SECONDS": "0", "REPLY_DELAY_SECONDS": str(delay_s)})
    assert reply(serve(chat, "job-first", "my name is Ada")).startswith("Turn 1")
    with ThreadPoolExecutor(2) as pool:
        records = list(pool.map(lambda n: serve(chat, f"job-{n}", f"message {n}", "job-first"), (1, 2)))
    assert sorted(reply(r)[:6] for r in records) == ["Turn 2", "Turn 3"]
    earlier, later = sorted(map(in_container, records))
    # side by side they would overlap by about delay_s; one after the other, not at all
    # (less the few milliseconds between the earlier's relay and its record being written)
    assert later[0] > earlier[1] - delay_s / 4, (earlier, later)


def test_a_session_in_use_keeps_its_lease_and_one_left_unused_is_reaped(relay):
    """Each message renews its container's lease (session_idle_ttl_s): a session used more
    often than that outlives it, while reconcile passes reap expired leases; left
    unused, its lease lapses and the next pass closes it."""
    ttl_s = 2.0
    chat = relay(session_idle_ttl_s=ttl_s, env={"BOOT_SECONDS": "0"})
    manager = chat.manager
    first = serve(chat, "job-kept", "my name is Ada")
    container = first["result"]["greenroom"]["container"]
    began = time.monotonic()
    n = 0
    while time.monotonic() - began < 2 * ttl_s:  # in use every ttl_s / 4, for twice the TTL
        time.sleep(ttl_s / 4)
        n += 1
        assert manager.reconcile(POOL).reaped == 0
        record = serve(chat, f"job-kept-{n}", "what is my name?", "job-kept")
        assert reply(record) == "Your name is Ada." and record["result"]["greenroom"]["container"] == container
    wait_until(lambda: manager.reconcile(POOL).reaped == 1, ttl_s + 10, interval=0.2, message="the lapsed lease reaped")
    assert manager.state.session("celery/job-kept")["state"] == "closed"
    assert container not in manager.state.containers(POOL)
    closed = serve(chat, "job-late", "still there?", "job-kept")
    assert closed["status"] == "failed" and closed["error"]["code"] == "session_closed", closed


def test_a_job_served_for_longer_than_its_lease_keeps_it(relay):
    """The heartbeat renews the job's lease while the relay works: a reply slower than
    job_lease_s lapses nothing, so the check that sends lapsed jobs again finds none."""
    chat = relay(settings={"job_lease_s": 1}, env={"BOOT_SECONDS": "0", "REPLY_DELAY_SECONDS": "3"})
    sent = []
    with ThreadPoolExecutor(1) as pool:
        served = pool.submit(serve, chat, "job-slow", "hello")
        wait_until(lambda: (chat.jobs.get("job-slow") or {}).get("status") == "running", 10, message="running")
        while not served.done():  # as beat's requeue_lapsed_jobs would, but every 0.1 s
            sent += chat.jobs.requeue_lapsed(lambda job_id, kwargs: None)
            time.sleep(0.1)
        record = served.result()
    assert reply(record).startswith("Turn 1")
    assert sent == [] and (record["deliveries"], record.get("requeued")) == ("1", None), (sent, record)


def test_a_redelivered_job_that_is_final_returns_its_stored_result(relay):
    """Its record comes back as stored; the model is not told again (the session's next
    message is its second turn) and no delivery takes the job."""
    chat = relay(env={"BOOT_SECONDS": "0"})
    first = serve(chat, "job-once", "my name is Ada")
    assert reply(first) == "Turn 1: nice to meet you, Ada."
    again = serve(chat, "job-once", "my name is Ada")
    assert again == first
    assert reply(serve(chat, "job-next", "my name is Bob", "job-once")).startswith("Turn 2")
    chat.manager.close_session("celery/job-once")
    failed = serve(chat, "job-late", "hello?", "job-once")
    assert failed["status"] == "failed" and failed["error"]["code"] == "session_closed", failed
    assert serve(chat, "job-late", "hello?", "job-once") == failed  # a failed job stays failed, as stored


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_first_message_goes_past_every_container_that_takes_no_connection(relay, stream):
    """Two idle servers dead (an engine lost, say), the first two a claim takes: a new
    session's message never reached them, so it goes on to the third, which answers; a
    streamed one too, its stream never told to start over (nothing had gone out).
    (A container that dies under a message is tried past once only: test_faults.py.)"""
    chat = relay(target_idle=3, env={"BOOT_SECONDS": "0"})
    manager = chat.manager
    manager.reconcile(POOL)
    wait_until(lambda: manager.state.counts(POOL)["idle"] == 3, 20, message="3 idle servers")
    dead = manager.state.idle_ids(POOL)[:2]  # oldest idle first: the order claims take them
    for container_id in dead:
        manager.runtime_for(manager.state.get(container_id)).destroy(container_id)  # gone; Redis still says idle
    record = chat.serve("job-new", POOL, [{"role": "user", "content": "my name is Ada"}], stream=stream)
    assert reply(record) == "Turn 1: nice to meet you, Ada.", record
    assert record["result"]["greenroom"]["container"] not in dead
    events = [entry.event for entry in chat.jobs.log.read("job-new")]
    assert "restart" not in events and ("chunk" in events) == stream, events
    assert not set(dead) & set(manager.state.idle_ids(POOL))  # out of service


def test_a_container_found_dead_between_messages_tells_the_next_one_container_lost(relay):
    """Whoever notices a session's container died first, the relay or a reconcile pass,
    its next message reads container_lost (the reconcile case once read session_closed)."""
    chat = relay(env={"BOOT_SECONDS": "0"})
    manager = chat.manager
    first = serve(chat, "job-first", "my name is Ada")
    container = first["result"]["greenroom"]["container"]
    manager.runtime_for(manager.state.get(container)).destroy(container)  # it died
    assert manager.reconcile(POOL).forgotten == 1  # the pass noticed before any message
    lost = serve(chat, "job-next", "still there?", "job-first")
    assert lost["status"] == "failed" and lost["error"]["code"] == "container_lost", lost
