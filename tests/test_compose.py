"""docker-compose.yml: its structure (networks, the Docker socket, secrets), and the whole
stack brought up from it, on host networking (tests/compose_stack.py says why), serving a
chat through to a pool container."""

import copy
import json
import os
import re
import secrets
import subprocess
import tomllib

import httpx
import pytest
import redis

from compose_stack import REPO, ComposeProject, compose_command, host_network_variant, load_compose
from conftest import RUN_ID, free_port, require, wait_until
from pool_manager.runtimes.docker import DockerRuntime, container_options
from pool_manager.settings import load_settings

GREENROOM_SERVICES = ("api", "worker", "maintenance", "beat", "flower")
# The test's own tags, so that it never replaces the images other tests use.
IMAGE, CHATBOT_IMAGE = "greenroom/greenroom:compose-test", "greenroom/chatbot:compose-test"
SECRET_KEY = re.compile(r"PASSWORD|API_KEYS|TOKEN|SECRET|REDISCLI_AUTH")
REFERENCE = re.compile(r"^\$\{GREENROOM_[A-Z_]+:\?[^}]+\}$")  # ${VAR:?message}: from .env, required


# ---------------------------------------------------------------- the file itself

def test_model_containers_have_a_network_of_their_own():
    doc = load_compose()
    services = doc["services"]
    networks = {name: set(service.get("networks", [])) for name, service in services.items()}
    assert networks == {"redis": {"greenroom"}, "api": {"greenroom"}, "beat": {"greenroom"},
                        "flower": {"greenroom"}, "worker": {"greenroom", "models"},
                        "maintenance": {"greenroom", "models"}, "chatbot-image": set()}
    assert services["chatbot-image"]["network_mode"] == "none"
    assert doc["networks"]["models"]["internal"] is True
    pool = tomllib.loads((REPO / "deploy" / "greenroom.toml").read_text())["pools"]["chatbot"]
    assert pool["network"] == doc["networks"]["models"]["name"]


def test_the_compose_pool_serves_on_its_private_network(monkeypatch):
    """Inside compose a model server listens on 0.0.0.0 of the model network, reached by name."""
    monkeypatch.setenv("GREENROOM_CONFIG", str(REPO / "deploy" / "greenroom.toml"))
    spec = load_settings().pools["chatbot"]
    runtime = DockerRuntime("compose-spec")  # no engine needed: nothing is sent to it
    options = container_options(runtime, "gr-chatbot-1", "chatbot", spec, 0, "a-key")
    assert options["network"] == "greenroom-models" and "network_mode" not in options
    assert (options["environment"]["HOST"], options["environment"]["PORT"]) == ("0.0.0.0", str(spec.port))
    assert runtime.endpoint("gr-chatbot-1", spec, 0) == f"http://gr-chatbot-1:{spec.port}"


def test_only_the_workers_hold_the_docker_socket():
    services = load_compose()["services"]
    holders = {name for name, service in services.items()
               if any("docker.sock" in volume for volume in service.get("volumes", []))}
    assert holders == {"worker", "maintenance"}


def test_secrets_come_from_env_and_redis_needs_its_password():
    services = load_compose()["services"]
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_KEY.search(key):
                assert REFERENCE.match(value), f"{name}: {key} must come from .env, not {value!r}"
    for name in GREENROOM_SERVICES:
        url = services[name]["environment"]["GREENROOM_REDIS_URL"]
        assert re.fullmatch(r"redis://:\$\{GREENROOM_REDIS_PASSWORD:\?[^}]+\}@redis:6379/0", url), (name, url)
    redis_service = services["redis"]
    assert REFERENCE.match(redis_service["environment"]["REDISCLI_AUTH"])
    argv = " ".join(redis_service["command"])  # the password is in a file, never in argv
    assert "requirepass" not in argv and "requirepass %s" in redis_service["entrypoint"][2]
    assert "--maxmemory " in argv + " " and "--maxmemory-policy noeviction" in argv


def test_compose_validates_the_file_and_refuses_to_run_without_a_redis_password(tmp_path):
    command = compose_command() or require("neither `docker compose` nor docker-compose is installed "
                                           "(run `make test`, which installs docker-compose)")
    env = {"PATH": os.environ["PATH"], "GREENROOM_API_KEYS": '{"admin":"x"}', "GREENROOM_FLOWER_PASSWORD": "y",
           "GREENROOM_REDIS_PASSWORD": "z"}
    empty = tmp_path / "empty.env"
    empty.touch()
    argv = [*command, "--env-file", str(empty), "-f", str(REPO / "docker-compose.yml"), "config", "-q"]
    assert subprocess.run(argv, env=env, capture_output=True, text=True).returncode == 0
    del env["GREENROOM_REDIS_PASSWORD"]
    refused = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "set GREENROOM_REDIS_PASSWORD in .env" in refused.stderr


# ---------------------------------------------------------------- the stack, running

def host_test_overrides(ports: dict[str, int], doc: dict) -> dict:
    """The test's settings over the host-network variant: loopback ports, its own image
    tags, built without any network, and a quick-booting pool on host networking."""
    shared = {"image": IMAGE, "environment": {
        "GREENROOM_REDIS_URL": f"redis://:${{GREENROOM_REDIS_PASSWORD}}@127.0.0.1:{ports['redis']}/0",
        "GREENROOM_POOLS": json.dumps({"chatbot": {"image": CHATBOT_IMAGE, "network": "host",
                                                   "env": {"BOOT_SECONDS": "1"}}}),
    }}
    services = {name: copy.deepcopy(shared) for name in GREENROOM_SERVICES}
    services["api"]["build"] = {"network": "none"}
    services["api"]["environment"] |= {"GREENROOM_API_HOST": "127.0.0.1", "GREENROOM_API_PORT": str(ports["api"])}
    services["flower"]["environment"] |= {"GREENROOM_FLOWER_HOST": "127.0.0.1",
                                          "GREENROOM_FLOWER_PORT": str(ports["flower"])}
    services["chatbot-image"] = {"image": CHATBOT_IMAGE, "build": {"network": "none"}}
    services["redis"] = {
        "command": [*doc["services"]["redis"]["command"], "--port", str(ports["redis"]), "--bind", "127.0.0.1"],
        "healthcheck": {"test": ["CMD-SHELL", f"redis-cli -p {ports['redis']} ping | grep -q PONG"]},
    }
    return {"services": services}


def compose_env(stack: dict) -> dict[str, str]:
    """What .env would hold: local images, an offline build, this stack's secrets."""
    return {"BASE_IMAGE": "greenroom/base:bookworm", "GREENROOM_INSTALL_FROM": "wheelhouse",
            "GREENROOM_REDIS_IMAGE": "greenroom/redis:bookworm", "GREENROOM_DEPLOYMENT": stack["deployment"],
            "GREENROOM_REDIS_PASSWORD": stack["secrets"]["redis"],
            "GREENROOM_API_KEYS": "'" + json.dumps({"admin": stack["secrets"]["token"]}) + "'",
            "GREENROOM_FLOWER_PASSWORD": stack["secrets"]["flower"],
            "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid)}


@pytest.fixture
def compose_stack(request, docker_engine, tmp_path):
    """The compose stack up, built from local images only; afterwards (also on failure:
    logs first) down, and the deployment's model containers removed."""
    command = compose_command() or require("neither `docker compose` nor docker-compose is installed "
                                           "(run `make test`, which installs docker-compose)")
    if not os.path.exists("/var/run/docker.sock"):
        require("the compose workers mount /var/run/docker.sock, which is not here")
    prepared = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "base", "wheelhouse", "redis"],
                              capture_output=True, text=True, timeout=600)
    assert prepared.returncode == 0, f"scripts/setup.sh failed:\n{prepared.stdout}\n{prepared.stderr}"
    tag = secrets.token_hex(3)
    stack = {
        "deployment": f"{RUN_ID}-compose-{tag}",
        "ports": {"redis": free_port(), "api": free_port(), "flower": free_port()},
        "secrets": {"redis": secrets.token_hex(24), "token": secrets.token_hex(24), "flower": secrets.token_hex(24)},
    }
    doc = load_compose()
    files = {"compose.host.yml": host_network_variant(doc),
             "compose.test.yml": host_test_overrides(stack["ports"], doc)}
    project = ComposeProject(command, f"grcompose{RUN_ID}{tag}", tmp_path, files, compose_env(stack))
    stack["project"] = project
    try:
        project.run("build", "api", "chatbot-image", timeout=600)
        project.run("up", "--detach", "--no-build", timeout=300)
        yield stack
    finally:
        failed = not getattr(request.node, "report_call", None) or request.node.report_call.failed
        if failed:
            print(f"--- compose logs of {project.name} ---\n{project.logs()}")
        project.down()
        remove_deployment(docker_engine, stack["deployment"])


def remove_deployment(client, deployment: str) -> None:
    for row in client.api.containers(all=True, filters={"label": f"greenroom.owner={deployment}"}):
        client.api.remove_container(row["Id"], force=True)


def _get(url: str, **kwargs) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, **kwargs)
    except httpx.TransportError:
        return None


@pytest.mark.timeout(900)  # a first run builds the wheelhouse and images; later ones reuse them
def test_the_compose_stack_serves_a_chat_from_a_pool_container(compose_stack, docker_engine):
    stack, ports, secret = compose_stack, compose_stack["ports"], compose_stack["secrets"]
    api = f"http://127.0.0.1:{ports['api']}"
    wait_until(lambda: (r := _get(f"{api}/readyz")) is not None and r.status_code == 200, 120, interval=0.5,
               message="the API ready (it reaches Redis with the password)")

    client = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {secret['token']}"}, timeout=90)
    first = client.post("/v1/chat/completions", json={
        "model": "chatbot", "messages": [{"role": "user", "content": "Hello! My name is Ada."}]})
    assert first.status_code == 200, first.text
    assert "nice to meet you, Ada" in first.json()["choices"][0]["message"]["content"]
    session = first.json()["greenroom"]["session_id"]
    again = client.post("/v1/chat/completions", json={
        "model": "chatbot", "session_id": session, "messages": [{"role": "user", "content": "What is my name?"}]})
    assert again.json()["choices"][0]["message"]["content"] == "Your name is Ada."
    models = docker_engine.api.containers(filters={"label": f"greenroom.owner={stack['deployment']}"})
    assert models and {row["Image"] for row in models} == {CHATBOT_IMAGE}

    flower = f"http://127.0.0.1:{ports['flower']}/api/workers"
    wait_until(lambda: _get(flower) is not None, 60, interval=0.5, message="Flower to listen")
    assert _get(flower).status_code == 401

    def both_workers():
        response = _get(f"{flower}?refresh=1", auth=("admin", secret["flower"]))
        return response is not None and response.status_code == 200 and \
            {name.split("@")[0] for name in response.json()} >= {"chat", "pool"}

    wait_until(both_workers, 60, interval=1, message="both workers in Flower")

    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=ports["redis"], socket_timeout=5).ping()
    authed = redis.Redis(port=ports["redis"], password=secret["redis"], socket_timeout=5)
    assert authed.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert int(authed.config_get("maxmemory")["maxmemory"]) > 0

    project = stack["project"]
    wait_until(lambda: docker_engine.api.inspect_container(project.container_id("api"))["State"]["Health"]["Status"]
               == "healthy", 60, interval=1, message="the API container's healthcheck")
    argvs = []  # what each container was started with, and its processes' argv now (redis-server
    for service in ("redis", *GREENROOM_SERVICES):  # rewrites its own, hence both)
        container = project.container_id(service)
        attrs = docker_engine.api.inspect_container(container)
        argvs.append(" ".join([attrs["Path"], *attrs["Args"]]))
        argvs += [" ".join(row) for row in docker_engine.api.top(container)["Processes"]]
    assert any("redis-server /tmp/redis.conf" in argv for argv in argvs)
    logs = project.logs()
    assert "Connected to redis://:**@127.0.0.1" in logs  # Celery masks the password itself
    for name, value in secret.items():
        assert not any(value in argv for argv in argvs), f"the {name} secret is on a command line"
        assert value not in logs, f"the {name} secret is in the compose logs"

    project.down()
    remove_deployment(docker_engine, stack["deployment"])
    left = docker_engine.api.containers(all=True, filters={"label": f"greenroom.owner={stack['deployment']}"})
    left += docker_engine.api.containers(all=True, filters={"label": f"com.docker.compose.project={project.name}"})
    assert left == []
