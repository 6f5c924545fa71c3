"""Real parts for every test: a redis-server per test session, the Docker engine (or a
clear skip), a fresh deployment id per test, and clean-up by label afterwards."""

import os
import secrets
import shutil

import pytest

from bench.stack import RedisServer, free_port, wait_until  # noqa: F401 (the tests import them from here)
from pool_manager.errors import RuntimeUnavailable
from pool_manager.manager import PoolManager
from pool_manager.runtimes.docker import DockerRuntime
from pool_manager.settings import load_settings, reference_pool

RUN_ID = f"t{secrets.token_hex(3)}"  # every deployment id of this test session starts so
IMAGE = "greenroom/chatbot:latest"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A redis-server of this test session's own, on a free loopback port."""
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


def require(reason: str):
    """What a test needs is missing: a skip saying why, or a failure where the run promised
    Docker (GREENROOM_REQUIRE_DOCKER=1: `make test` and CI)."""
    if os.environ.get("GREENROOM_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{reason} (GREENROOM_REQUIRE_DOCKER=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_engine():
    """The engine, or require()'s skip or failure saying why."""
    runtime = DockerRuntime(f"{RUN_ID}-probe")
    reason = None
    if not runtime.ping():
        reason = "no Docker engine reachable (start one, or run `make test`)"
    else:
        try:
            runtime.client.images.get(IMAGE)
        except Exception:
            reason = f"image {IMAGE} missing (run `make test`, which builds it)"
    if reason:
        require(reason)
    yield runtime.client
    runtime.close()


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory):
    """A Kubernetes API emulation over HTTP and a test kubelet (tests/kube_cluster.py)."""
    from kube_cluster import KubeCluster

    cluster = KubeCluster(tmp_path_factory.mktemp("kube"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session", autouse=True)
def no_container_outlives_the_run():
    """Every test removes what it made; at the end, anything labelled by this run that is
    left is removed, and the leak fails the run."""
    yield
    runtime = DockerRuntime(f"{RUN_ID}-cleanup")
    leaked = []
    if runtime.ping():
        for row in runtime.client.api.containers(all=True, filters={"label": "greenroom.managed=true"}):
            if row["Labels"].get("greenroom.owner", "").startswith(RUN_ID):
                leaked.append(row["Names"][0].lstrip("/"))
                runtime.client.api.remove_container(row["Id"], force=True)
    runtime.close()
    assert not leaked, f"containers outlived their tests: {leaked}"


SETTINGS_AT_START = {k: v for k, v in os.environ.items() if k.startswith("GREENROOM_")}


@pytest.fixture(autouse=True)
def no_setting_outlives_its_test():
    """A GREENROOM_* variable a test or fixture leaves in os.environ would configure every
    later test (and pass a test that depends on it only after another): each test ends
    with the variables the run began with."""
    yield
    now = {k: v for k, v in os.environ.items() if k.startswith("GREENROOM_")}
    changed = set(now.items()) ^ set(SETTINGS_AT_START.items())
    assert not changed, f"GREENROOM_* variables left changed in os.environ: {changed}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def deployment(request) -> str:
    return f"{RUN_ID}-{secrets.token_hex(3)}"


@pytest.fixture
def make_manager(request, redis_url, deployment, tmp_path):
    """Build PoolManagers for this test's deployment; on teardown, dump the logs of its
    servers if the test failed, then destroy every one of them."""
    managers = []

    def build(runtime="docker", settings: dict | None = None, **spec_fields) -> PoolManager:
        if runtime == "docker":
            request.getfixturevalue("docker_engine")
        if runtime == "kubernetes":
            settings = request.getfixturevalue("kube_cluster").settings() | (settings or {})
        spec = reference_pool(runtime=runtime, **{"env": {"BOOT_SECONDS": "1"}} | spec_fields)
        settings = load_settings(deployment=deployment, redis_url=redis_url, pools={"chatbot": spec},
                                 state_dir=tmp_path / "process-runtime", **(settings or {}))
        manager = PoolManager(settings)
        if runtime != "auto":
            manager.runtime(runtime)  # made now, so that teardown also finds what other processes started
        managers.append(manager)
        return manager

    yield build
    failed = getattr(request.node, "report_call", None) and request.node.report_call.failed
    for manager in managers:
        for runtime in manager._runtimes.values():
            try:
                instances = runtime.list_managed()
            except RuntimeUnavailable:
                continue  # a runtime that cannot be reached has made nothing to clean up
            for instance in instances:
                if failed:
                    print(f"--- logs of {instance.id} ---\n{runtime.logs(instance.id)}")
                runtime.destroy(instance.id)
        manager.close()


def pytest_collection_modifyitems(items):
    """Tests that restart the Docker engine run last: every other test uses it."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_docker_engine") is not None)
