"""One contract, every runtime: create, readiness, endpoint, destroy, list by label, mark.

The same tests run against docker (the engine), process (local processes) and
kubernetes (the API emulation over HTTP with the test kubelet, tests/kube_cluster.py)."""

import time

import httpx
import pytest

from conftest import RUN_ID, free_port, wait_until
from pool_manager.errors import RuntimeFailure
from pool_manager.httpclient import is_healthy
from pool_manager.runtimes import runtime_class
from pool_manager.settings import reference_pool

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["process", "docker", "kubernetes"])
def build(request, tmp_path):
    """A function that builds this runtime for an owner."""
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
        return runtime_class("docker")
    if request.param == "kubernetes":
        return request.getfixturevalue("kube_cluster").runtime
    return lambda owner: runtime_class("process")(owner, state_dir=str(tmp_path))


@pytest.fixture
def runtime(build, deployment):
    made = build(deployment)
    yield made
    for instance in made.list_managed():
        made.destroy(instance.id)
    made.close()


KEY = "contract-key-0123456789"


def create(runtime, name="one", **env):
    spec = reference_pool(env={"BOOT_SECONDS": "1"} | env, port=free_port())
    port = free_port()
    instance = runtime.create(f"gr-contract-{name}-{RUN_ID}", "chatbot", spec, port, KEY)
    return instance, spec, port


def test_create_boot_serve_destroy(runtime):
    instance, spec, port = create(runtime)
    assert instance.running and instance.pool == "chatbot"
    assert runtime.ready_endpoint(instance.id, spec, port) is None  # still booting
    endpoint = wait_until(lambda: runtime.ready_endpoint(instance.id, spec, port), 15, message="ready")
    assert runtime.endpoint(instance.id, spec, port) == endpoint
    body = {"messages": [{"role": "user", "content": "hello"}]}
    assert httpx.post(f"{endpoint}/v1/chat/completions", json=body, timeout=5).status_code == 401  # no key
    reply = httpx.post(f"{endpoint}/v1/chat/completions", json=body, timeout=5,
                       headers={"Authorization": f"Bearer {KEY}"}).json()
    assert reply["object"] == "chat.completion"
    assert reply["greenroom_container"]["instance"] == instance.id
    assert runtime.key_of(instance.id, reference_pool()) == KEY  # read back, for adoption

    runtime.destroy(instance.id)
    runtime.destroy(instance.id)  # idempotent
    assert runtime.inspect(instance.id) is None
    assert instance.id not in [i.id for i in runtime.list_managed()]
    assert runtime.ready_endpoint(instance.id, spec, port) is None
    assert not is_healthy(endpoint, "/healthz")


def test_list_managed_sees_only_its_owner(runtime, build):
    mine, _, _ = create(runtime, "mine")
    other = build(f"{runtime.owner}-other")
    listed = runtime.list_managed()
    assert [i.id for i in listed] == [mine.id]
    assert listed[0].port == mine.port and listed[0].created_at == pytest.approx(time.time(), abs=30)
    assert listed[0].pool == "chatbot"
    assert runtime.inspect(mine.id).port == mine.port
    assert other.list_managed() == []
    other.close()


def test_exited_server_reads_as_not_running(runtime):
    instance, spec, port = create(runtime, "exits", FAULT_CRASH_AT_BOOT="1")
    wait_until(lambda: not runtime.inspect(instance.id).running, 15, message="server to exit")
    assert [i.running for i in runtime.list_managed()] == [False]
    assert runtime.ready_endpoint(instance.id, spec, port) is None


def test_inspect_unknown_is_none(runtime):
    assert runtime.inspect("gr-contract-never-created") is None


def test_mark_accepts_every_state_and_a_gone_instance(runtime):
    instance, _, _ = create(runtime, "marked")
    for state in ("warming", "idle", "assigned"):
        runtime.mark(instance.id, state)
    runtime.destroy(instance.id)
    runtime.mark(instance.id, "idle")  # gone: no error
    assert runtime.inspect(instance.id) is None


def test_a_closed_runtime_works_or_raises_runtime_failure(build, deployment):
    """A boot watcher can outlive close() (a manager closed mid-boot) and handles only
    RuntimeFailure: after close, every call works or raises one, never anything else."""
    runtime = build(deployment)
    instance, spec, port = create(runtime, "closed")
    runtime.list_managed()  # its client is in use
    runtime.close()
    calls = [lambda: runtime.inspect(instance.id), runtime.list_managed, lambda: runtime.mark(instance.id, "idle"),
             lambda: runtime.ready_endpoint(instance.id, spec, port), lambda: runtime.destroy(instance.id)]
    try:
        for call in calls:
            try:
                call()
            except RuntimeFailure:
                pass
        assert runtime.logs(instance.id) is not None
    finally:
        cleaner = build(deployment)
        for leftover in cleaner.list_managed():
            cleaner.destroy(leftover.id)
        cleaner.close()
