"""Pools on the kubernetes runtime: a real PoolManager and Redis, the Kubernetes API
emulation over HTTP and the test kubelet running the reference server (kube_cluster.py)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import free_port, wait_until
from pool_manager.errors import ContainerLost, RuntimeUnavailable
from pool_manager.manager import PoolManager
from pool_manager.overview import PoolOverview
from pool_manager.settings import reference_pool

pytestmark = pytest.mark.timeout(90)
POOL = "chatbot"


@pytest.fixture
def cluster(kube_cluster):
    return kube_cluster


def kube_manager(make_manager, **spec):
    return make_manager("kubernetes", **({"port": free_port()} | spec))


def pool_status(manager):
    return PoolOverview(manager.settings, manager.redis).status(POOL)


def fill(manager, idle: int, timeout: float = 30) -> None:
    manager.reconcile(POOL)
    wait_until(lambda: manager.state.counts(POOL)["idle"] >= idle, timeout, message=f"{idle} idle")


def pods(cluster, manager, **labels) -> dict[str, dict]:
    """name -> labels, as `kubectl get pods -l greenroom.owner=<deployment>,...` lists them."""
    found = cluster.pods(**{"greenroom.owner": manager.settings.deployment} | labels)
    return {pod["metadata"]["name"]: pod["metadata"]["labels"] for pod in found}


def states(cluster, manager) -> dict[str, str]:
    return {name: labels["greenroom.state"] for name, labels in pods(cluster, manager).items()}


def test_idle_pods_are_labelled_and_a_claim_relabels_its_pod_assigned(make_manager, cluster):
    manager = kube_manager(make_manager, target_idle=2)
    fill(manager, 2)
    listed = pods(cluster, manager)
    assert set(listed) == set(manager.state.containers(POOL))
    assert all(labels | {"greenroom.state": "idle"} == labels for labels in listed.values())
    assert all(labels["app.kubernetes.io/managed-by"] == "greenroom" and labels["greenroom.pool"] == POOL
               for labels in listed.values())

    claim = manager.claim(POOL, "s-label")
    assert claim.container.endpoint.startswith("http://127.") and claim.container.endpoint.endswith(
        f":{manager.settings.pools[POOL].port}")  # the pod's IP, the spec's port
    assert httpx.get(f"{claim.container.endpoint}/healthz", timeout=2).status_code == 200
    manager.reconcile(POOL)  # as every claim triggers one
    assert states(cluster, manager)[claim.container.id] == "assigned"
    assert list(pods(cluster, manager, **{"greenroom.state": "assigned"})) == [claim.container.id]
    wait_until(lambda: len(pods(cluster, manager, **{"greenroom.state": "idle"})) == 2, 20, message="refilled")

    assert manager.close_session("s-label")
    assert claim.container.id not in pods(cluster, manager)  # gone when close returns


def test_restarted_manager_keeps_known_pods_adopts_unknown_ones_and_reaps_the_unready(make_manager, cluster):
    manager = kube_manager(make_manager, target_idle=2)
    fill(manager, 2)
    report = PoolManager(manager.settings).reconcile(POOL)  # a new pool worker, same Redis: both known
    assert (report.forgotten, report.adopted, report.destroyed, report.started) == (0, 0, 0, 0)

    stray = f"gr-{POOL}-stray{free_port()}"  # labelled as ours, unknown to Redis, never ready
    spec = manager.settings.pools[POOL]
    manager.pool_runtime(POOL).create(stray, POOL, spec.model_copy(update={"env": {"FAULT_NEVER_HEALTHY": "1"}}),
                                      free_port(), "stray-key-0123456789")
    impatient = spec.model_copy(update={"boot_timeout_s": 2})  # only now: a loaded machine boots slowly
    time.sleep(3)  # past boot_timeout_s: no longer "still booting"
    manager.state.redis.flushall()  # Redis lost its state
    restarted = PoolManager(manager.settings.model_copy(update={"pools": {POOL: impatient}}))
    report = restarted.reconcile(POOL)
    assert (report.adopted, report.destroyed, report.started) == (2, 1, 0)
    assert restarted.state.counts(POOL)["idle"] == 2
    assert set(pods(cluster, manager)) == set(restarted.state.containers(POOL))
    assert all(state == "idle" for state in states(cluster, manager).values())
    restarted.close()


def test_pods_deleted_or_evicted_from_outside_are_forgotten_and_replaced(make_manager, cluster):
    manager = kube_manager(make_manager, target_idle=2)
    fill(manager, 2)
    claim = manager.claim(POOL, "s-lost")
    idle_victim = next(iter(manager.state.containers(POOL).keys() - {claim.container.id}))
    httpx.delete(f"{cluster.api.url}/api/v1/namespaces/{cluster.namespace}/pods/{claim.container.id}")  # kubectl
    cluster.kubelet.evict(idle_victim)  # node pressure
    wait_until(lambda: not any(i.running for i in manager.pool_runtime(POOL).list_managed()
                               if i.id in (claim.container.id, idle_victim)), 10, message="both down")
    report = manager.reconcile(POOL)
    assert report.forgotten == 2 and report.started == 2
    with pytest.raises(ContainerLost, match="container_lost: its container .* stopped"):
        manager.claim(POOL, "s-lost")
    fill(manager, 2)
    wait_until(lambda: {claim.container.id, idle_victim}.isdisjoint(pods(cluster, manager)), 15,
               message="the lost pods removed")


def test_max_total_holds_under_concurrent_reconciles(make_manager, cluster):
    port = free_port()
    managers = [kube_manager(make_manager, target_idle=4, max_total=5, port=port) for _ in range(3)]
    fill(managers[0], 4)
    for n in range(3):
        managers[0].claim(POOL, f"s{n}")  # 3 assigned, 1 idle: the deficit of 3 fits only 1
    barrier = threading.Barrier(6)

    def reconcile(manager):
        barrier.wait()
        manager.reconcile(POOL)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(reconcile, managers * 2))
    assert sum(managers[0].state.counts(POOL).values()) == 5
    assert len(pods(cluster, managers[0])) == 5


def test_a_pod_that_never_turns_ready_is_deleted_after_boot_timeout(make_manager, cluster):
    manager = kube_manager(make_manager, target_idle=1, max_total=1, boot_timeout_s=2,
                           env={"FAULT_NEVER_HEALTHY": "1"})
    first = manager.reconcile(POOL).started_ids[0]
    assert states(cluster, manager) == {first: "warming"}
    wait_until(lambda: pool_status(manager).failed >= 1, 15, message="boot failure")
    wait_until(lambda: first not in pods(cluster, manager), 10, message="the pod deleted")
    assert manager.state.get(first) is None


def test_an_unreachable_api_server_reads_as_runtime_unavailable(make_manager, tmp_path):
    config = tmp_path / "kubeconfig"
    config.write_text(f"apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster:\n"
                      f"    server: http://127.0.0.1:{free_port()}\nusers:\n- name: u\n  user: {{}}\n"
                      "contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n")
    manager = make_manager("kubernetes", settings={"kubeconfig": str(config)}, image=reference_pool().image)
    with pytest.raises(RuntimeUnavailable, match="unreachable"):
        manager.reconcile(POOL)
    status = pool_status(manager)
    assert status.degraded and "unreachable" in status.runtime_error
