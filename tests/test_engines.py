"""One pool across two Docker engines, each driven by its own pool worker (engines.py):
the machine's dockerd (engine a) and a second dockerd of this module's own (engine b,
bench/second_dockerd.py), both on host networking, the reference image in each.

Placement spreads the pool (fewest first); sessions are served on both; the second
daemon lost (its containers killed, then it stops) -> after engine_grace_s its
containers are declared lost, their sessions read container_lost, the pool is whole
again on engine a, and no job is lost; the daemon back -> Redis and both engines agree,
nothing left over.
"""

import threading
import time

import pytest
import redis

from bench.second_dockerd import SecondDockerd
from conftest import RUN_ID, require, wait_until
from faultkit import Stopwatch, poll_until_final, report, submit
from pool_manager.engines import Engines, place
from pool_manager.errors import ConfigError
from pool_manager.keys import Keys
from pool_manager.settings import load_settings
from pool_manager.state import Container, PoolState
from stack import Stack, chat

pytestmark = pytest.mark.timeout(300)
POOL = "chatbot"
GRACE_S = 5
ENGINES = ("a", "b")


@pytest.fixture(scope="module")
def engine_b(docker_engine):
    """A second dockerd, started for this module and removed after it, with the image."""
    if why := SecondDockerd.refusal():
        require(why)
    daemon = SecondDockerd(f"greenroom-{RUN_ID}")
    try:
        daemon.start()
        daemon.load_image(docker_engine)
    except Exception as exc:  # noqa: BLE001  said in the skip (or failure, where Docker was promised)
        daemon.remove()
        require(f"a second dockerd could not be started here: {exc}")
    yield daemon
    daemon.remove()


@pytest.fixture
def two_engines(redis_url, docker_engine, engine_b, tmp_path, request):
    pool = {"image": "greenroom/chatbot:latest", "runtime": "docker", "target_idle": 4, "max_total": 30,
            "env": {"BOOT_SECONDS": "1"}}
    engines = {"a": {"port_range": [20000, 24999]},
               "b": {"docker_host": engine_b.url, "port_range": [25000, 29999]}}
    stack = Stack(redis_url, "engines", tmp_path, pool, engines=engines, engine_grace_s=GRACE_S,
                  reconcile_interval_s=1, claim_timeout_s=90, chat_timeout_s=10)
    try:
        stack.start("pool-a", "pool-b", "chat", "beat", "api")
        yield stack
    finally:
        failed = getattr(request.node, "report_call", None) and request.node.report_call.failed
        if failed:
            print(stack.logs())
        stack.stop()
        if engine_b.process is None:
            engine_b.start()
        for name in engine_b.containers(stack.deployment):
            engine_b.client.api.remove_container(name, force=True)


class View:
    """What Redis holds of the pool, and what each engine lists, for one stack."""

    def __init__(self, stack: Stack, docker_engine, engine_b: SecondDockerd):
        self.state = PoolState(redis.Redis.from_url(stack.redis_url, decode_responses=True), stack.deployment)
        self.owner = stack.deployment
        self.listers = {"a": docker_engine, "b": engine_b}

    def records(self) -> dict[str, dict[str, str]]:
        """Per engine, container id -> state (warming, idle, assigned)."""
        by_engine = {e: {} for e in ENGINES}
        for container in self.state.containers(POOL).values():
            by_engine[container.engine][container.id] = container.state
        return by_engine

    def count(self, engine: str, state: str) -> int:
        return sum(1 for s in self.records()[engine].values() if s == state)

    def listed(self, engine: str) -> set[str]:
        lister = self.listers[engine]
        if engine == "b":
            return set(lister.containers(self.owner))
        rows = lister.api.containers(all=True, filters={"label": f"greenroom.owner={self.owner}"})
        return {row["Names"][0].lstrip("/") for row in rows}

    def retiring(self) -> list[str]:
        return self.state.redis.zrange(Keys(self.owner).pool(POOL, "retiring"), 0, -1)

    def agree(self) -> bool:
        """Every engine lists exactly the containers Redis holds on it; none is leaving."""
        records = self.records()
        return not self.retiring() and all(self.listed(e) == set(records[e]) for e in ENGINES)


def test_placement_is_fewest_first_within_room():
    assert place(4, {"a": 0, "b": 0}, {"a": 9, "b": 9}, "a") == {"a": 2, "b": 2}
    assert place(3, {"a": 3, "b": 0}, {"a": 9, "b": 9}, "a") == {"b": 3}
    assert place(4, {"a": 0, "b": 0}, {"a": 9, "b": 1}, "b") == {"a": 3, "b": 1}  # b's capacity
    assert place(1, {"a": 1, "b": 1}, {"a": 9, "b": 9}, "b") == {"b": 1}  # a tie: the pass's own engine
    assert place(5, {"a": 0}, {"a": 2}, "a") == {"a": 2}  # no room left anywhere


def test_one_local_engine_unless_configured():
    settings = load_settings()
    assert list(settings.engine_specs) == ["local"] and settings.own_engine == "local"
    several = load_settings(engines={"a": {}, "b": {"address": "10.0.0.12"}})
    assert several.own_engine is None  # a chat worker or the API: drives no engine
    assert load_settings(engines={"a": {}, "b": {}}, engine="b").own_engine == "b"
    with pytest.raises(ConfigError, match="engine 'c' is not configured"):
        load_settings(engines={"a": {}, "b": {}}, engine="c")
    with pytest.raises(ConfigError, match="several engines need runtime 'docker'"):
        load_settings(engines={"a": {}, "b": {}}, pools={"p": {"command": ["x"], "runtime": "process"}})


def test_a_pool_spreads_over_two_engines_and_serves_sessions_on_both(two_engines, docker_engine, engine_b):
    view = View(two_engines, docker_engine, engine_b)
    wait_until(lambda: all(view.count(e, "idle") == 2 for e in ENGINES), 180, interval=0.2,
               message="2 idle on each engine")
    wait_until(view.agree, 30, interval=0.2, message="engines to list what Redis holds")
    for engine in ENGINES:
        for name in view.listed(engine):
            labels = view.listers["a"].api.inspect_container(name) if engine == "a" else \
                engine_b.client.api.inspect_container(name)
            assert labels["Config"]["Labels"]["greenroom.engine"] == engine

    names = ["Ada", "Grace", "Alan", "Edsger"]
    with two_engines.client(timeout=30) as client:
        first = {name: chat(client, f"my name is {name}") for name in names}
        assert all(job["status"] == "succeeded" for job in first.values()), first
        on = {name: _engine_of(view, job) for name, job in first.items()}
        assert set(on.values()) == set(ENGINES), on  # sessions on both engines
        for name, job in first.items():
            again = chat(client, "what is my name?", session_id=job["session_id"])
            assert again["status"] == "succeeded", again
            assert again["result"]["choices"][0]["message"]["content"] == f"Your name is {name}."
            assert again["result"]["greenroom"]["container"] == job["result"]["greenroom"]["container"]
    wait_until(lambda: sum(view.count(e, "idle") for e in ENGINES) == 4, 60, interval=0.2, message="4 idle again")
    totals = {e: len(view.records()[e]) for e in ENGINES}
    assert totals == {"a": 4, "b": 4}, view.records()  # fewest first: the replacements kept the balance
    wait_until(view.agree, 30, interval=0.2, message="engines to list what Redis holds")


def test_an_engine_lost_and_found(two_engines, docker_engine, engine_b):
    view = View(two_engines, docker_engine, engine_b)
    wait_until(lambda: all(view.count(e, "idle") == 2 for e in ENGINES), 180, interval=0.2,
               message="2 idle on each engine")
    with two_engines.client(timeout=30) as client:
        sessions = {}
        for name in ("Ada", "Grace", "Alan", "Edsger"):
            job = chat(client, f"my name is {name}")
            assert job["status"] == "succeeded", job
            sessions[name] = (job["session_id"], _engine_of(view, job))
        assert {engine for _, engine in sessions.values()} == set(ENGINES), sessions
        wait_until(lambda: sum(view.count(e, "idle") for e in ENGINES) == 4, 60, interval=0.2, message="4 idle")

        on_b = view.listed("b")
        # one session on b is left alone: only the loss of b can take its container out of service
        untouched = next(name for name, (_, engine) in sessions.items() if engine == "b")
        clock = Stopwatch()
        engine_b.lose()
        jobs: dict[str, dict] = {}
        threads = [threading.Thread(target=_submit, args=(two_engines, jobs, f"new-{n}", None, "hello"))
                   for n in range(6)]
        threads += [threading.Thread(target=_submit, args=(two_engines, jobs, name, session, "what is my name?"))
                    for name, (session, _) in sessions.items() if name != untouched]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)
        assert len(jobs) == len(threads), jobs.keys()  # every job reached an end: none lost
        for n in range(6):
            assert jobs[f"new-{n}"]["status"] == "succeeded", jobs[f"new-{n}"]
            assert _engine_of(view, jobs[f"new-{n}"]) == "a"
        for name, (session, engine) in sessions.items():
            if name == untouched:
                continue
            job = jobs[name]
            if engine == "a":
                assert job["result"]["choices"][0]["message"]["content"] == f"Your name is {name}.", job
            else:  # its container is gone with engine b: told so
                assert job["status"] == "failed" and job["error"]["code"] == "container_lost", job

        wait_until(lambda: view.count("a", "idle") == 4 and not view.records()["b"], 90, interval=0.1,
                   message="the pool whole again on engine a")
        whole = clock()
        refused = client.post("/v1/jobs", json={"model": POOL, "session_id": sessions[untouched][0],
                                                 "messages": [{"role": "user", "content": "still there?"}]})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "container_lost", refused.text
        assert view.count("a", "assigned") == 6 + sum(1 for _, e in sessions.values() if e == "a")
        assert not view.count("b", "assigned")  # the untouched session's container left service too
        lost = set(view.retiring())
        assert lost == on_b, (lost, on_b)  # kept as leaving (counted against max_total) until b is back

        engine_b.start()
        back = clock()
        # b's dead containers reaped (nothing left over), and every engine lists what Redis holds
        wait_until(lambda: on_b.isdisjoint(view.listed("b")) and view.agree(), 90, interval=0.2,
                   message="Redis and both engines to agree again")
        agreed = clock() - back
    report("engine lost", grace_s=GRACE_S, whole_after_loss_s=whole, jobs=len(jobs), jobs_lost=0,
           containers_declared_lost=len(lost), agree_after_return_s=agreed,
           left_over=len(on_b & view.listed("b")))


def _engine_of(view: View, job: dict) -> str:
    container = job["result"]["greenroom"]["container"]
    record = view.state.get(container)
    assert record is not None, container
    return record.engine


def _submit(stack: Stack, jobs: dict, key: str, session: str | None, text: str) -> None:
    """Submit and follow one job to its end, recorded in jobs[key] (not final in 150 s: the
    thread fails and nothing is recorded); a refused submission is recorded as a failed job
    with the API's error."""
    with stack.client(timeout=30) as client:
        submitted = submit(client, text, session)
        if submitted.status_code != 202:
            jobs[key] = {"status": "failed", "refused": submitted.status_code, **submitted.json()}
            return
        jobs[key] = poll_until_final(client, submitted.json()["id"], timeout=150)


def test_lost_containers_count_against_max_total_until_their_engine_says_they_are_gone(redis_url, deployment):
    """Redis alone (no engine): engine b silent past the grace period while a answers."""
    settings = load_settings(deployment=deployment, redis_url=redis_url, engine="a", engine_grace_s=5,
                             engines={"a": {}, "b": {}})
    state = PoolState(redis.Redis.from_url(redis_url, decode_responses=True), deployment)
    engines = Engines(state.redis, state.keys, settings, state, request=lambda pool, engine: None)
    for n, engine in enumerate("aabb"):
        state.add(Container(f"gr-{deployment}-{n}", POOL, "idle", 30000 + n, "http://127.0.0.1", time.time(), "k",
                            engine=engine))
    state.redis.hset(state.keys.engine("b"), "seen_at", time.time() - 60)
    engines.seen("a", POOL)
    engines.reserve(POOL, "b", 2)  # placed on b before it went silent
    assert engines.occupied(POOL, listed_here=2) == 6
    lost = engines.declare_lost(POOL)
    assert sorted(c.engine for c in lost) == ["b", "b"]
    assert {c.engine for c in state.containers(POOL).values()} == {"a"}
    assert engines.placed(POOL) == {"a": 0, "b": 0}  # b's placements lapsed
    assert engines.occupied(POOL, listed_here=2) == 4  # b's two still count: they may still run
    engines.clear_removed(POOL, "b", live={}, release=lambda port: None)  # b back, listing neither
    assert engines.occupied(POOL, listed_here=2) == 2
    assert state.redis.zcard(state.keys.pool(POOL, "retiring")) == 0
