"""Claim and reconcile against a real Redis and real containers of the reference image."""

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import wait_until
from pool_manager.errors import ContainerLost, SessionClosed, SessionModelMismatch
from pool_manager.httpclient import http_client
from pool_manager.manager import PoolManager
from pool_manager.overview import PoolOverview

pytestmark = pytest.mark.timeout(120)
POOL = "chatbot"


def fill(manager, idle: int, timeout: float = 30) -> None:
    manager.reconcile(POOL)
    wait_until(lambda: manager.state.counts(POOL)["idle"] >= idle, timeout, message=f"{idle} idle")


def pool_status(manager):
    return PoolOverview(manager.settings, manager.redis).status(POOL)


def labelled(docker_engine, manager) -> list[str]:
    label = f"greenroom.owner={manager.settings.deployment}"
    return sorted(c.name for c in docker_engine.containers.list(all=True, filters={"label": label}))


def test_thirty_claimers_ten_idle_containers(make_manager):
    manager = make_manager(target_idle=10)
    fill(manager, 10)
    barrier = threading.Barrier(30)

    def claimer(n):
        barrier.wait()
        claim = manager.claim(POOL, f"session-{n}")
        return claim.container.id if claim else None

    with ThreadPoolExecutor(30) as pool:
        results = list(pool.map(claimer, range(30)))
    handed_out = [r for r in results if r]
    assert len(handed_out) == 10 and len(set(handed_out)) == 10
    assert results.count(None) == 20
    assert manager.state.counts(POOL) == {"warming": 0, "idle": 0, "assigned": 10}


def test_session_keeps_its_container_and_redelivery_claims_no_second(make_manager):
    manager = make_manager(target_idle=2)
    fill(manager, 2)
    first = manager.claim(POOL, "s1")
    again = manager.claim(POOL, "s1")  # a follow-up, or the same job redelivered
    assert first.new and not again.new
    assert again.container.id == first.container.id
    assert manager.state.counts(POOL)["assigned"] == 1


def test_reconcile_holds_target_idle_after_claims(make_manager):
    manager = make_manager(target_idle=3)
    fill(manager, 3)
    for n in range(2):
        manager.claim(POOL, f"s{n}")
    report = manager.reconcile(POOL)
    assert report.started == 2
    wait_until(lambda: manager.state.counts(POOL) == {"warming": 0, "idle": 3, "assigned": 2}, 30,
               message="3 idle again")


def test_burst_deficit_starts_in_one_pass(make_manager, docker_engine):
    manager = make_manager(target_idle=8)
    report = manager.reconcile(POOL)
    assert report.started == 8
    assert len(labelled(docker_engine, manager)) == 8
    assert manager.reconcile(POOL).started == 0  # idempotent: nothing more to do


def test_max_total_holds_under_concurrent_reconciles(make_manager, docker_engine):
    managers = [make_manager(target_idle=4, max_total=6) for _ in range(4)]
    fill(managers[0], 4)
    for n in range(3):
        managers[0].claim(POOL, f"s{n}")  # 3 assigned, 1 idle: the deficit of 3 fits only 2
    barrier = threading.Barrier(8)

    def reconcile(manager):
        barrier.wait()
        manager.reconcile(POOL)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(reconcile, managers * 2))
    counts = managers[0].state.counts(POOL)
    assert sum(counts.values()) == 6 and counts["assigned"] == 3
    assert len(labelled(docker_engine, managers[0])) == 6


def test_never_healthy_container_is_destroyed_after_boot_timeout(make_manager, docker_engine):
    manager = make_manager(target_idle=1, max_total=1, boot_timeout_s=2, env={"FAULT_NEVER_HEALTHY": "1"})
    first = manager.reconcile(POOL).started_ids[0]
    wait_until(lambda: pool_status(manager).failed >= 1, 15, message="boot failure")
    assert first not in labelled(docker_engine, manager)
    assert manager.state.get(first) is None


def test_container_killed_from_outside_is_forgotten_and_replaced(make_manager, docker_engine):
    manager = make_manager(target_idle=2)
    fill(manager, 2)
    claim = manager.claim(POOL, "s-killed")
    idle_victim = next(iter(manager.state.containers(POOL).keys() - {claim.container.id}))
    docker_engine.containers.get(claim.container.id).kill()
    docker_engine.containers.get(idle_victim).kill()
    report = manager.reconcile(POOL)
    assert report.forgotten == 2 and report.started == 2  # back to two idle
    with pytest.raises(ContainerLost, match="container_lost: its container .* stopped"):
        manager.claim(POOL, "s-killed")
    fill(manager, 2)
    assert {claim.container.id, idle_victim}.isdisjoint(labelled(docker_engine, manager))


def test_restarted_manager_adopts_healthy_containers(make_manager, docker_engine):
    manager = make_manager(target_idle=3)
    fill(manager, 3)
    before = labelled(docker_engine, manager)
    keys = {c.id: c.key for c in manager.state.containers(POOL).values()}
    manager.state.redis.flushall()  # Redis lost its state (a flush, or a manager without it)
    restarted = PoolManager(manager.settings)
    report = restarted.reconcile(POOL)
    assert (report.adopted, report.started, report.destroyed) == (3, 0, 0)
    assert restarted.state.counts(POOL)["idle"] == 3
    assert labelled(docker_engine, manager) == before
    assert {c.id: c.key for c in restarted.state.containers(POOL).values()} == keys  # read back from Docker


def test_unknown_containers_neither_healthy_nor_booting_are_destroyed(make_manager, docker_engine):
    """Labelled containers Redis does not know: the one that answers is adopted; one past
    boot_timeout_s that never answered, and one that exited, are destroyed."""
    manager = make_manager(target_idle=1, boot_timeout_s=2)  # the adopted one is the one idle wanted
    runtime, spec = manager.pool_runtime(POOL), manager.settings.pools[POOL]

    def start(name: str, **env) -> str:  # as a crashed manager would have left it, unrecorded
        instance_id = f"gr-{POOL}-{name}-{secrets.token_hex(3)}"
        runtime.create(instance_id, POOL, spec.model_copy(update={"env": spec.env | env}),
                       manager.lifecycle.ports.allocate(instance_id), secrets.token_urlsafe(16),
                       spec_hash=manager.specs.spec_hash(POOL))  # of the current spec: no rollout
        return instance_id

    healthy, stuck, exited = start("healthy"), start("stuck", FAULT_NEVER_HEALTHY="1"), start("exited",
                                                                                          FAULT_CRASH_AT_BOOT="1")
    created = runtime.inspect(stuck).created_at
    wait_until(lambda: runtime.ready_endpoint(healthy, spec, runtime.inspect(healthy).port), 15, message="healthy")
    wait_until(lambda: not runtime.inspect(exited).running, 15, message="the crashed one to exit")
    wait_until(lambda: time.time() > created + spec.boot_timeout_s + 0.5, 15, message="boot_timeout_s to pass")
    report = manager.reconcile(POOL)
    assert (report.adopted, report.destroyed, report.started) == (1, 2, 0)
    assert labelled(docker_engine, manager) == [healthy]
    assert manager.state.states(POOL) == {healthy: "idle"}


def test_jobs_waiting_in_line_are_demand_and_a_burst_of_them_boots_in_one_pass(make_manager):
    manager = make_manager("process", target_idle=1, max_total=10)
    fill(manager, 1)
    for n in range(6):
        manager.line.join(POOL, "tenant", f"job-{n}")
    report = manager.reconcile(POOL)
    assert report.started == 6  # target_idle 1 + 6 waiting, less the 1 idle: all in this pass
    assert manager.reconcile(POOL).started == 0
    wait_until(lambda: manager.state.counts(POOL)["idle"] == 7, 30, message="7 idle")


def test_flush_while_booting_neither_leaks_nor_duplicates(make_manager, docker_engine):
    manager = make_manager(target_idle=3, env={"BOOT_SECONDS": "2"})
    manager.reconcile(POOL)
    manager.state.redis.flushall()  # mid-boot: all three still warming
    report = manager.reconcile(POOL)
    assert (report.adopted, report.started) == (3, 0)
    wait_until(lambda: manager.state.counts(POOL)["idle"] == 3, 20, message="adopted ones to boot")
    manager.reconcile(POOL)
    assert len(labelled(docker_engine, manager)) == 3


def test_closing_a_session_destroys_its_container(make_manager, docker_engine):
    manager = make_manager(target_idle=1)
    fill(manager, 1)
    claim = manager.claim(POOL, "s-close")
    assert manager.close_session("s-close")
    assert claim.container.id not in labelled(docker_engine, manager)
    assert not manager.close_session("s-close")  # already closed
    with pytest.raises(SessionClosed, match="closed"):
        manager.claim(POOL, "s-close")


def test_recycled_container_returns_to_idle(make_manager):
    manager = make_manager(target_idle=1, recycle=True)
    fill(manager, 1)
    claim = manager.claim(POOL, "s-recycle")
    manager.close_session("s-recycle")
    assert manager.state.counts(POOL) == {"warming": 0, "idle": 1, "assigned": 0}
    assert manager.claim(POOL, "s-next").container.id == claim.container.id


def test_idle_session_is_reaped_after_its_ttl(make_manager, docker_engine):
    manager = make_manager(target_idle=1, session_idle_ttl_s=1)
    fill(manager, 1)
    claim = manager.claim(POOL, "s-idle")
    wait_until(lambda: manager.reconcile(POOL).reaped == 1, 10, interval=0.3, message="reaped")
    assert claim.container.id not in labelled(docker_engine, manager)
    assert manager.state.session("s-idle")["state"] == "closed"


def test_scale_at_run_time(make_manager):
    manager = make_manager(target_idle=1)
    spec = manager.specs.scale(POOL, target_idle=3)
    assert spec.target_idle == 3 and manager.reconcile(POOL).started == 3


def test_lowering_target_idle_retires_the_surplus_idle_containers(make_manager, docker_engine):
    """The most recently idle go first. Two batches boot one after the other, so which two
    are the newer is known without asking the state how it orders them."""
    manager = make_manager(target_idle=2)
    fill(manager, 2)
    older = set(manager.state.containers(POOL))
    manager.specs.scale(POOL, target_idle=4)
    fill(manager, 4)
    claim = manager.claim(POOL, "s-keep")
    assert claim.container.id in older  # a claim takes the longest idle
    manager.specs.scale(POOL, target_idle=1)
    report = manager.reconcile(POOL)
    assert (report.retired, report.started) == (2, 0)
    assert manager.state.counts(POOL) == {"warming": 0, "idle": 1, "assigned": 1}
    assert set(labelled(docker_engine, manager)) == older  # the newer two are gone, from Docker too
    assert (manager.reconcile(POOL).retired, manager.reconcile(POOL).started) == (0, 0)  # idempotent


def test_process_runtime_serves_a_pool(make_manager):
    manager = make_manager("process", target_idle=2)
    fill(manager, 2)
    claim = manager.claim(POOL, "s-proc")
    assert claim.container.endpoint.startswith("http://127.0.0.1:")
    assert pool_status(manager).runtime == "process"
    reply = http_client().post(f"{claim.container.endpoint}/v1/chat/completions",
                               json={"messages": [{"role": "user", "content": "my name is Ada"}]},
                               headers={"Authorization": f"Bearer {claim.container.key}"}).json()
    assert reply["choices"][0]["message"]["content"] == "Turn 1: nice to meet you, Ada."


def test_auto_runtime_is_docker_where_an_engine_answers(make_manager, docker_engine):
    manager = make_manager("auto", target_idle=1)
    started = manager.reconcile(POOL).started_ids
    assert manager.runtime_name(POOL) == "docker" and pool_status(manager).runtime == "docker"
    assert labelled(docker_engine, manager) == started and len(started) == 1


def test_auto_runtime_is_process_where_no_engine_answers(make_manager, tmp_path):
    manager = make_manager("auto", target_idle=1, settings={"docker_host": f"unix://{tmp_path}/no-engine.sock"})
    fill(manager, 1)
    assert manager.runtime_name(POOL) == "process" and pool_status(manager).runtime == "process"
    assert [i.id for i in manager.runtime("process").list_managed()] == list(manager.state.containers(POOL))


def test_a_crashing_image_backs_off_and_marks_the_pool_degraded(make_manager, docker_engine):
    manager = make_manager(target_idle=2, env={"FAULT_CRASH_AT_BOOT": "1"}, settings={"boot_backoff_s": (0.5, 4)})
    started, passes = 0, 0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:  # a tight reconcile loop, as a crash loop would drive it
        started += manager.reconcile(POOL).started
        passes += 1
        time.sleep(0.2)
    status = pool_status(manager)
    assert status.degraded and status.failed >= 4
    assert passes >= 10 and started <= 14  # without backoff: 2 a pass (fewer passes on a loaded machine)
    manager.reconcile(POOL)
    assert len([c for c in labelled(docker_engine, manager)]) <= 2  # crashed ones are removed


def test_a_session_keeps_to_its_model(make_manager):
    manager = make_manager("process", target_idle=1)
    fill(manager, 1)
    pools = manager.settings.pools | {"other": manager.settings.pools[POOL]}
    two_pools = PoolManager(manager.settings.model_copy(update={"pools": pools}))
    two_pools.claim(POOL, "s-model")
    with pytest.raises(SessionModelMismatch):
        two_pools.claim("other", "s-model")


def test_at_max_total_the_longest_unused_session_makes_way_for_a_waiting_job(make_manager, docker_engine):
    manager = make_manager(target_idle=2, max_total=2, session_min_idle_s=1)
    fill(manager, 2)
    unused, busy = manager.claim(POOL, "t/unused"), manager.claim(POOL, "t/busy")
    time.sleep(1.2)  # both idle past session_min_idle_s ...
    manager.renew(busy)  # ... but `busy` was used just now
    manager.line.join(POOL, "t", "job-waiting")
    report = manager.reconcile(POOL)
    assert report.preempted == 1 and report.started == 1  # its container's room, for the line
    assert unused.container.id not in labelled(docker_engine, manager)
    assert manager.state.session("t/busy")["state"] == "active"
    with pytest.raises(SessionClosed, match="to free its container for jobs waiting"):
        manager.claim(POOL, "t/unused")


def test_a_session_mid_relay_is_never_taken_for_the_line(make_manager):
    manager = make_manager(target_idle=1, max_total=1, session_min_idle_s=0)
    fill(manager, 1)
    claim = manager.claim(POOL, "t/relaying")
    assert manager.state.try_lock("session:t/relaying", "delivery", 30)  # a relay holds its turn
    manager.line.join(POOL, "t", "job-waiting")
    assert manager.reconcile(POOL).preempted == 0
    assert manager.state.session("t/relaying")["state"] == "active" and claim.new
