"""What docker inspect shows of a pooled container: fenced in as the spec says."""

import pytest

from conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def test_containers_run_hardened_and_limited(make_manager, docker_engine):
    manager = make_manager("docker", target_idle=1, mem_limit="256m", cpus=0.5, pids_limit=64)
    report = manager.reconcile("chatbot")
    container_id = report.started_ids[0]
    wait_until(lambda: manager.state.counts("chatbot")["idle"] == 1, 20, message="idle")
    attrs = docker_engine.api.inspect_container(container_id)
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == "10001:10001"
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] is True
    assert host["Memory"] == 256 * 2**20 and host["MemorySwap"] == 256 * 2**20
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 64
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 4096, "Hard": 4096}]
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
    assert host["NetworkMode"] == "host"
    assert attrs["Config"]["Labels"]["greenroom.owner"] == manager.settings.deployment
    assert attrs["Config"]["Labels"]["greenroom.pool"] == "chatbot"
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["HOST"] == "127.0.0.1"  # host networking: the server binds loopback only


def test_a_named_network_pool_runs_on_that_network(make_manager, docker_engine):
    """network = "<name>" (as compose's model network): the container joins that network,
    not the host's; its server listens on 0.0.0.0 at the spec's port there; greenroom
    reaches it by name. No bridge network can exist here, so Docker's built-in "none"
    network stands in: nothing outside can reach it, so what is checked is what the engine
    accepted and what runs inside."""
    manager = make_manager("docker", target_idle=1, network="none", port=8123)
    container_id = manager.reconcile("chatbot").started_ids[0]
    attrs = docker_engine.api.inspect_container(container_id)
    assert attrs["HostConfig"]["NetworkMode"] == "none" and set(attrs["NetworkSettings"]["Networks"]) == {"none"}
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert (env["HOST"], env["PORT"]) == ("0.0.0.0", "8123")
    assert manager.state.get(container_id).endpoint == f"http://{container_id}:8123"
    probe = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8123/healthz').status)"
    container = docker_engine.containers.get(container_id)
    wait_until(lambda: container.exec_run(["python3", "-c", probe]).output.strip() == b"200", 20, interval=0.2,
               message="the server answering on its network")
