"""Rolling updates against a real Redis and real servers: a changed spec (a new
configuration read by restarted workers: here a second PoolManager on the same
deployment) or `pool rollout` makes new containers of a new spec hash; idle old ones are
retired as new ones become ready, never below the target; assigned ones keep their
sessions; a new spec that never boots stops the rollout with the old ones serving."""

import threading
import time

import pytest

from conftest import wait_until
from pool_manager.httpclient import http_client
from pool_manager.overview import PoolOverview

pytestmark = pytest.mark.timeout(120)
POOL = "chatbot"
BOOT = {"BOOT_SECONDS": "0.5"}


def fill(manager, idle: int, timeout: float = 30) -> None:
    manager.reconcile(POOL)
    wait_until(lambda: manager.state.counts(POOL)["idle"] >= idle, timeout, message=f"{idle} idle")


def status(manager):
    return PoolOverview(manager.settings, manager.redis).status(POOL)


def made_from(manager) -> dict[str, tuple[str, str]]:
    return manager.state.spec_hashes(POOL)


class IdleWatch:
    """Samples the idle count every 5 ms in a thread: its lowest is the rollout's worst;
    and the most containers the state held at once."""

    def __init__(self, manager):
        self.manager, self.lowest, self.most, self._stop = manager, None, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def _run(self):
        while not self._stop.wait(0.005):
            counts = self.manager.state.counts(POOL)
            self.lowest = counts["idle"] if self.lowest is None else min(self.lowest, counts["idle"])
            self.most = max(self.most, sum(counts.values()))


def roll(manager, timeout: float = 60) -> list:
    """Reconcile (as beat would, every 0.2 s) until no idle or warming container of an
    older spec is left; the passes' reports."""
    reports, current = [], manager.specs.spec_hash(POOL)

    def done() -> bool:
        if report := manager.reconcile(POOL):  # None: a boot watcher's pass held the lock
            reports.append(report)
        return not any(state in ("idle", "warming") and h != current for state, h in made_from(manager).values())

    wait_until(done, timeout, interval=0.2, message="the old idle containers to be replaced")
    return reports


def test_a_changed_spec_rolls_idle_containers_over_never_below_target_and_keeps_sessions(make_manager):
    old = make_manager("process", target_idle=3, env=BOOT, recycle=True)
    fill(old, 3)
    kept = old.claim(POOL, "t/kept")  # a session on an old container
    fill(old, 3)
    before = made_from(old)
    new = make_manager("process", target_idle=3, env=BOOT | {"RELEASE": "2"}, recycle=True)  # the new configuration
    assert new.specs.spec_hash(POOL) != old.specs.spec_hash(POOL)
    with IdleWatch(new) as watch:
        first = new.reconcile(POOL)
        mid = status(new)
        roll(new)
    assert first.started == 3 and first.retired == 0  # new ones boot first; nothing old goes yet
    assert (mid.rollout, mid.old.idle, mid.old.assigned, mid.spec_hash) == ("rolling", 3, 1, new.specs.spec_hash(POOL))
    assert watch.lowest >= 3  # never below the target
    after = made_from(new)
    current = new.specs.spec_hash(POOL)
    assert sorted(state for state, h in after.values() if h == current) == ["idle"] * 3
    assert after[kept.container.id] == ("assigned", old.specs.spec_hash(POOL))  # kept its session
    assert set(after) - {kept.container.id} == {cid for cid, (_, h) in after.items() if h == current}
    assert not set(before) - {kept.container.id} & set(after)  # every old idle one retired
    again = new.claim(POOL, "t/kept")
    assert not again.new and again.container.id == kept.container.id
    reply = http_client().post(f"{again.container.endpoint}/v1/chat/completions",
                               json={"messages": [{"role": "user", "content": "still there?"}]},
                               headers={"Authorization": f"Bearer {again.container.key}"})
    assert reply.status_code == 200
    assert status(new).rollout == "rolling"  # its session still holds one old container
    new.close_session("t/kept")  # recycle = true, but an old container is not recycled: it goes
    assert kept.container.id not in made_from(new)
    final = status(new)
    assert (final.rollout, final.old.idle + final.old.assigned + final.old.warming) == ("none", 0)


def test_pool_rollout_replaces_containers_of_the_same_spec_and_labels_them(make_manager, docker_engine):
    """`greenroom pool rollout` (after rebuilding an image under its tag): the same spec,
    a new spec hash; the Docker containers carry it as their greenroom.spec-hash label."""
    manager = make_manager(target_idle=2, env={"BOOT_SECONDS": "1"})
    fill(manager, 2)
    was = manager.specs.spec_hash(POOL)
    owner = f"greenroom.owner={manager.settings.deployment}"

    def labels() -> set[str]:  # one list call (no inspect of each: one may go meanwhile)
        return {row["Labels"]["greenroom.spec-hash"] for row in docker_engine.api.containers(filters={"label": owner})}

    assert labels() == {was}
    now = manager.specs.rollout(POOL)
    assert now != was
    with IdleWatch(manager) as watch:
        roll(manager)
    assert watch.lowest >= 2
    wait_until(lambda: labels() == {now},
               30, message="only new containers left in Docker")
    assert status(manager).rollout == "none" and status(manager).spec_hash == now


def test_a_new_spec_that_never_boots_stops_the_rollout_and_the_old_ones_keep_serving(make_manager):
    old = make_manager("process", target_idle=3, env=BOOT)
    fill(old, 3)
    new = make_manager("process", target_idle=3, env=BOOT | {"FAULT_CRASH_AT_BOOT": "1"},
                       settings={"boot_backoff_s": (0.2, 0.4)})
    most_warming, most_started, deadline = 0, 0, time.monotonic() + 8
    while time.monotonic() < deadline:
        was_degraded = status(new).degraded
        report = new.reconcile(POOL)
        counts = new.state.counts(POOL)
        if was_degraded and status(new).degraded:  # (boots started before it may still be failing)
            most_warming = max(most_warming, counts["warming"])
            most_started = max(most_started, report.started if report else 0)
        time.sleep(0.1)
    stopped = status(new)
    assert stopped.degraded and stopped.rollout == "stopped" and stopped.failed >= 4
    assert stopped.old.idle == stopped.idle == 3  # no old container retired
    assert most_started <= 1 and most_warming <= 1  # once degraded: one new container at a time
    claim = new.claim(POOL, "t/served")
    assert claim.new and made_from(new)[claim.container.id][1] == old.specs.spec_hash(POOL)
    restored = old  # the configuration put back: the old containers are current again, the canary goes
    wait_until(lambda: restored.reconcile(POOL) and status(restored).rollout == "none", 30, interval=0.2,
               message="no container of the failing spec left")


def test_at_max_total_one_old_idle_container_at_a_time_makes_way(make_manager):
    old = make_manager("process", target_idle=2, max_total=2, env=BOOT)
    fill(old, 2)
    new = make_manager("process", target_idle=2, max_total=2, env=BOOT | {"RELEASE": "2"})
    with IdleWatch(new) as watch:
        roll(new, timeout=60)
    assert watch.lowest >= 1  # at max_total the idle count dips by one, never more
    assert watch.most <= 2
    assert status(new).rollout == "none"
