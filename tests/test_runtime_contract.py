"""One contract, every runtime: create, health, endpoint, destroy, list by label."""

import time

import httpx
import pytest

from conftest import RUN_ID, free_port, wait_until
from pool_manager.httpclient import is_healthy
from pool_manager.runtimes import runtime_class
from pool_manager.settings import reference_pool

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["process", "docker"])
def runtime(request, tmp_path, deployment):
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
        made = runtime_class("docker")(deployment)
    else:
        made = runtime_class("process")(deployment, state_dir=str(tmp_path))
    yield made
    for instance in made.list_managed():
        made.destroy(instance.id)
    made.close()


KEY = "contract-key-0123456789"


def create(runtime, name="one", **env):
    spec = reference_pool(env={"BOOT_SECONDS": "1"} | env)
    port = free_port()
    instance = runtime.create(f"gr-contract-{name}-{RUN_ID}", "chatbot", spec, port, KEY)
    return instance, runtime.endpoint(instance.id, spec, port)


def test_create_boot_serve_destroy(runtime):
    instance, endpoint = create(runtime)
    assert instance.running and instance.pool == "chatbot"
    assert not is_healthy(endpoint, "/healthz")  # still booting
    wait_until(lambda: is_healthy(endpoint, "/healthz"), 15, message="healthy")
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
    assert not is_healthy(endpoint, "/healthz")


def test_list_managed_sees_only_its_owner(runtime, tmp_path):
    mine, _ = create(runtime, "mine")
    other_kind = type(runtime)
    other = other_kind(f"{runtime.owner}-other", **({"state_dir": str(tmp_path)} if other_kind.__name__ ==
                                                     "ProcessRuntime" else {}))
    listed = runtime.list_managed()
    assert [i.id for i in listed] == [mine.id]
    assert listed[0].port == mine.port and listed[0].created_at == pytest.approx(time.time(), abs=30)
    assert other.list_managed() == []


def test_exited_server_reads_as_not_running(runtime):
    instance, endpoint = create(runtime, "exits", FAULT_CRASH_AT_BOOT="1")
    wait_until(lambda: not runtime.inspect(instance.id).running, 15, message="server to exit")
    assert [i.running for i in runtime.list_managed()] == [False]


def test_inspect_unknown_is_none(runtime):
    assert runtime.inspect("gr-contract-never-created") is None
