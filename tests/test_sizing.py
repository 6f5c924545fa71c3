"""Pools that size themselves (target_idle = "auto", pool_manager/sizing.py): the rule
against its definition, and its inputs and outputs against a real Redis, real pools
(process runtime: a container is not the point here) and, end to end, a real stack."""

import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_until
from pool_manager.settings import REFERENCE_SERVER
from stack import Stack, chat
from pool_manager.metrics import Metrics
from pool_manager.overview import PoolOverview
from pool_manager.sizing import DEFAULT_BOOT_S, SHORT_FRACTION, idle_for, trimmed_count

pytestmark = pytest.mark.timeout(120)
POOL = "chatbot"


def smallest_k(mean: float, goal: float) -> int:
    """The rule, from its definition, term by term: the smallest k such that the arrivals
    of one boot time (Poisson with this mean) reach k with probability at most 1 - goal."""
    k, below = 0, 0.0  # below: P(X < k), each term from its closed form (in logs: no overflow)
    while 1 - below > 1 - goal:
        below += math.exp(k * math.log(mean) - mean - math.lgamma(k + 1)) if mean > 0 else float(k == 0)
        k += 1
    return k


@pytest.mark.parametrize("goal", [0.9, 0.95, 0.99, 0.999])
def test_the_idle_count_is_the_smallest_that_meets_the_warm_goal(goal):
    for rate in (0.01, 0.1, 0.44, 1, 1.77, 2.65, 5, 20):
        for boot_s in (0.5, 2, 2.3, 10, 60):
            assert idle_for(rate, boot_s, goal) == smallest_k(rate * boot_s, goal), (rate, boot_s)
    assert idle_for(0, 5, goal) == 0  # no arrivals: nothing needs to wait
    assert idle_for(1000, 60, goal, ceiling=50) == 50


def test_the_busiest_second_counts_only_as_much_as_the_second_busiest():
    assert trimmed_count([]) == 0
    assert trimmed_count([5.0 + i / 100 for i in range(20)]) == 1  # a burst within one second
    assert trimmed_count([0.5, 1.5, 2.5, 2.6]) == 3  # 1, 1, 2 -> 1, 1, 1
    assert trimmed_count([0.1, 0.2, 1.1, 1.2, 1.3]) == 4  # 2, 3 -> 2, 2


def arrivals(manager) -> int:
    return manager.redis.zcard(manager.state.keys.pool(POOL, "arrivals"))


def status(manager):
    return PoolOverview(manager.settings, manager.redis).status(POOL)


def fill(manager, idle: int, timeout: float = 30) -> None:
    manager.reconcile(POOL)
    wait_until(lambda: manager.state.counts(POOL)["idle"] >= idle, timeout, message=f"{idle} idle")


def boot_p90(manager) -> tuple[float, int]:
    """The latest boots' p90 (nearest rank), read from the pool's log as the test sees it."""
    boots = sorted(float(e["seconds"]) for e in Metrics(manager.redis, manager.settings.deployment).events(POOL, 200)
                   if e["kind"] == "booted")
    return boots[math.ceil(0.9 * len(boots)) - 1], len(boots)


def test_each_new_session_is_one_arrival_however_often_its_job_tries(make_manager):
    manager = make_manager("process", target_idle=0, max_total=2)
    for _ in range(5):
        assert manager.claim(POOL, "t/s1", "job-1") is None  # a job waiting in line tries again and again
    assert manager.claim(POOL, "t/s2", "job-2") is None
    assert arrivals(manager) == 2
    manager.specs.scale(POOL, target_idle=1)
    fill(manager, 1)
    assert manager.claim(POOL, "t/s1", "job-1").new  # job-1 gets its container at last: no new arrival
    assert not manager.claim(POOL, "t/s1", "job-3").new  # a follow-up in its session: none either
    assert arrivals(manager) == 2


def test_an_auto_target_comes_from_the_arrival_rate_and_the_boot_time(make_manager):
    """Thirty new sessions within the window (60 s): 0.5 a second. Before any boot the
    boot time is assumed; after, it is the boots' p90. Arrivals older than the short
    window, so the long window's rate is the one used."""
    manager = make_manager("process", target_idle="auto", min_idle=0, max_total=30, env={"BOOT_SECONDS": "0.3"})
    for n in range(30):
        manager.claim(POOL, f"t/s{n}", f"job-{n}")  # none idle: each is an arrival that would wait
    time.sleep(60 * SHORT_FRACTION + 0.2)  # out of the short window
    report = manager.reconcile(POOL)
    assert report.target_idle == smallest_k(0.5 * DEFAULT_BOOT_S, 0.99) == 12
    target = status(manager).target
    assert (target.source, target.setting, target.idle) == ("computed", "auto", 12)
    assert (target.auto.rate_per_s, target.auto.boots, target.auto.boot_s) == (0.5, 0, DEFAULT_BOOT_S)
    assert not target.auto.short_counted
    assert "0.50/s over 60 s" in target.why and "assumed (no boot seen yet)" in target.why
    wait_until(lambda: manager.state.counts(POOL)["idle"] == 12, 60, message="12 booted")

    manager.reconcile(POOL)
    boot_s, boots = boot_p90(manager)
    target = status(manager).target
    assert (target.auto.boot_s, target.auto.boots) == (boot_s, boots) and boots >= 12
    assert target.auto.computed == smallest_k(0.5 * boot_s, 0.99) < 12
    assert target.idle == target.auto.held == 12  # the lower figure waits out the cooldown (60 s)
    assert f"boot p90 {boot_s:.1f} s of the last {boots} boots" in target.why
    assert "held for the 60 s cooldown" in target.why


def test_a_step_up_is_seen_in_the_short_window_a_burst_within_one_second_is_not(make_manager):
    manager = make_manager("process", target_idle="auto", min_idle=0, max_total=40, env={"BOOT_SECONDS": "0.3"})
    wait_until(lambda: time.time() % 1 < 0.2, 2, interval=0.01, message="the start of a second")
    for n in range(15):
        manager.claim(POOL, f"t/burst{n}", f"burst-{n}")
    burst = manager.sizer.decide(POOL, manager.specs.effective(POOL))
    assert burst.long_rate_per_s == 15 / 60 and not burst.short_counted and burst.rate_per_s == 0.25
    for n in range(15):  # the same count again, but over 3 seconds: a rate, not a burst
        manager.claim(POOL, f"t/step{n}", f"step-{n}")
        time.sleep(0.2)
    step = manager.sizer.decide(POOL, manager.specs.effective(POOL))
    assert step.short_counted and step.rate_per_s == step.short_rate_per_s > step.long_rate_per_s == 30 / 60
    assert step.computed == idle_for(step.short_rate_per_s, step.boot_s, 0.99, ceiling=40) > burst.computed


def test_waiting_jobs_are_demand_on_top_of_the_computed_target_within_max_idle(make_manager):
    manager = make_manager("process", target_idle="auto", min_idle=1, max_idle=2, max_total=10,
                           env={"BOOT_SECONDS": "0.3"})
    fill(manager, 1)
    assert status(manager).target_idle == 1  # nothing arrived: min_idle
    for n in range(40):
        manager.claim(POOL, f"t/s{n}", f"job-{n}")  # one gets the idle container; all are arrivals
    report = manager.reconcile(POOL)
    assert report.target_idle == 2  # far more than 2 asked for: held to max_idle
    for n in range(3):
        manager.line.join(POOL, "t", f"waiting-{n}")
    report = manager.reconcile(POOL)
    counts = manager.state.counts(POOL)
    assert counts["idle"] + counts["warming"] == 2 + 3  # the target, plus the line


def test_a_lower_target_waits_out_the_cooldown_and_min_idle_0_drains_a_quiet_pool(make_manager):
    """A 10 s window, a 3 s cooldown: ten arrivals hold the target up while they are in
    the window; as they leave it the computed figure drops at once, the target only once
    no pass of the last 3 s computed more (the cooldown, as Kubernetes' stabilization
    window); then every idle container goes."""
    manager = make_manager("process", target_idle=2, max_total=10, env={"BOOT_SECONDS": "0.3"},
                           arrival_window_s=10, scale_down_cooldown_s=3, min_idle=0)
    fill(manager, 2)  # boots seen: the boot time is known
    manager.specs.scale(POOL, target_idle="auto")
    wait_until(lambda: time.time() % 1 < 0.2, 2, interval=0.01, message="the start of a second")
    for n in range(10):  # within one second: the short window (1 s here) takes them for a burst
        manager.claim(POOL, f"t/s{n}", f"job-{n}")
        time.sleep(0.05)
    passes = []  # (when, computed, whether the short window counted, target)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not (passes and passes[-1][3] == 0):
        if (report := manager.reconcile(POOL)) is not None:
            sizing = manager.sizer.last(POOL)
            passes.append((sizing.at, sizing.computed, sizing.short_counted, report.target_idle))
        time.sleep(0.25)
    assert passes[0][3] > 0 and passes[-1][3] == 0
    assert not any(short for _, _, short, _ in passes)  # a burst: the long window's figures alone
    for i, (at, _, _, target) in enumerate(passes):
        earlier = passes[:i + 1]
        assert target >= max(c for a, c, _, _ in earlier if a > at - 3 + 0.05)  # a lower figure waits
        assert target <= max(c for a, c, _, _ in earlier if a >= at - 3 - 0.05)  # but no longer
    assert any(computed < target for _, computed, _, target in passes)  # one did wait
    for n in range(10):
        manager.close_session(f"t/s{n}")  # the first two claimed the two idle containers
    wait_until(lambda: manager.reconcile(POOL) and manager.state.counts(POOL) == {"warming": 0, "idle": 0,
                                                                                  "assigned": 0}, 20,
               interval=0.2, message="the quiet pool to drain to nothing")


def test_idle_container_seconds_count_every_idle_second(make_manager):
    """Each idle container adds its time idle: those still idle as they stand, one that
    left idle (claimed) once, on leaving."""
    manager = make_manager("process", target_idle=2, env={"BOOT_SECONDS": "0.3"})
    fill(manager, 2)
    overview = PoolOverview(manager.settings, manager.redis)
    began, first = time.time(), overview.idle_seconds(POOL)
    time.sleep(1)
    assert manager.claim(POOL, "t/s1", "job-1").new
    counted = overview.stats(POOL)["idle_seconds"]
    time.sleep(0.5)
    later = overview.idle_seconds(POOL)
    elapsed = time.time() - began
    assert counted >= 1  # the claimed one, idle for over a second, added on leaving idle
    assert first + 2 * 1 <= later <= first + 2 * elapsed  # 2 idle for a second, then 1 or 2 for half a second
    manager.reconcile(POOL)  # its replacement
    assert overview.idle_seconds(POOL) >= later  # a counter: never down


def test_end_to_end_the_target_follows_the_arrivals_and_says_why(redis_url, tmp_path):
    """The whole stack (API, workers, beat) on an auto pool: new sessions arrive, the
    target rises from min_idle with the arrival rate; GET /v1/pools says why and /metrics
    shows the estimates, the target and the idle cost."""
    pool = {"command": [sys.executable, str(REFERENCE_SERVER)], "runtime": "process", "target_idle": "auto",
            "min_idle": 1, "max_total": 40, "env": {"BOOT_SECONDS": "0.5"}}  # no preemption: 24 sessions stay open
    with Stack(redis_url, "sizing", tmp_path, pool, reconcile_interval_s=1) as stack, stack.client() as client:
        wait_until(lambda: client.get("/v1/pools/chatbot").json()["idle"] == 1, 30, interval=0.2,
                   message="min_idle booted")
        quiet = client.get("/v1/pools/chatbot").json()
        assert (quiet["target_idle"], quiet["target"]["source"], quiet["target"]["setting"]) == (1, "computed", "auto")

        def session(n: int) -> str:
            time.sleep(n * 0.25)  # four new sessions a second, for 6 s
            job = chat(client, f"hello {n}")
            assert job["status"] == "succeeded", job
            return job["session_id"]

        with ThreadPoolExecutor(24) as threads:
            sessions = list(threads.map(session, range(24)))
        busy = client.get("/v1/pools/chatbot").json()
        auto = busy["target"]["auto"]
        assert auto["rate_per_s"] >= 24 / 60 and auto["boots"] >= 1 and 0.5 <= auto["boot_s"] < 10
        assert busy["target_idle"] == max(1, auto["held"]) > 1
        assert "new sessions and boot p90" in busy["target"]["why"]
        metrics = {m.name: m for m in text_string_to_metric_families(client.get("/metrics").text)}
        value = {name: next(s.value for s in metrics[name].samples if s.labels.get("pool") == "chatbot")
                 for name in ("greenroom_sizing_arrival_rate_per_second", "greenroom_sizing_boot_seconds",
                              "greenroom_target_idle", "greenroom_idle_container_seconds")}
        assert value["greenroom_sizing_arrival_rate_per_second"] >= 24 / 60
        assert 0.5 <= value["greenroom_sizing_boot_seconds"] < 10 and value["greenroom_target_idle"] > 1
        assert value["greenroom_idle_container_seconds"] > 0
        assert {s.labels["state"]: s.value for s in metrics["greenroom_outdated_containers"].samples} == {
            "warming": 0, "idle": 0, "assigned": 0}
        for session_id in sessions:
            client.delete(f"/v1/sessions/{session_id}")
