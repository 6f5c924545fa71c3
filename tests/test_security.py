"""What an attacker would try: pickled messages, tokens in logs, exposed model ports."""

import os
import pickle
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import require, wait_until
from pool_manager.jobs import JobStore
from pool_manager.settings import load_settings
from pool_manager.state import PoolState, connect_redis
from stack import TOKENS, Stack, chat, wait_for_pool
from workers.config import make_celery

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(redis_url, docker_engine, tmp_path_factory, request):
    pool = {"image": "greenroom/chatbot:latest", "runtime": "docker", "target_idle": 1, "max_total": 4,
            "env": {"BOOT_SECONDS": "1"}}
    running = Stack(redis_url, "security", tmp_path_factory.mktemp("security"), pool).start("pool", "chat", "api")
    yield running
    running.stop()
    if request.session.testsfailed:
        print(running.logs())


class Exploit:
    """Unpickling this runs a shell command: what a pickle-accepting worker would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_message_is_rejected_not_executed(stack, tmp_path):
    marker = tmp_path / "pwned"
    client = make_celery(load_settings(redis_url=stack.redis_url))
    jobs = JobStore(client.backend.client, stack.env["GREENROOM_DEPLOYMENT"])
    evil_id, good_id = str(uuid.uuid4()), str(uuid.uuid4())
    pickle.dumps(Exploit(marker))  # picklable: the payload really is a working exploit
    client.send_task("greenroom.chat", task_id=evil_id, queue="greenroom.chat", serializer="pickle",
                     kwargs={"model": "chatbot", "messages": [{"role": "user", "content": "x"}],
                             "options": {"x": Exploit(marker)}})
    good = client.send_task("greenroom.chat", task_id=good_id, queue="greenroom.chat",
                            kwargs={"model": "chatbot", "messages": [{"role": "user", "content": "x"}]})
    assert good.get(timeout=30)["status"] == "succeeded"  # the worker was up and consuming
    refusal = "Refusing to deserialize untrusted content of type pickle"
    wait_until(lambda: refusal in (stack.folder / "chat.log").read_text(), 10, message="the refusal logged")
    assert not marker.exists()
    assert jobs.get(evil_id) is None  # the task never ran
    assert client.backend.client.llen("greenroom.chat") == 0  # and the message is not left to loop


def test_no_secret_appears_in_any_log_or_command_line(stack):
    """API tokens, the Redis password and the containers' keys: in no log line of any
    program, whole (not only the tail), and in no process's argv on this machine."""
    with stack.client("acme") as client:
        wait_for_pool(client, idle=1)
        assert chat(client, "hello")["status"] == "succeeded"
        client.get("/v1/jobs/nope")
    keys = [container.key for container in _containers(stack)]
    secrets = [*TOKENS.values(), urlsplit(stack.redis_url).password, *keys]
    assert all(secrets) and keys
    logs = stack.logs(tail=None)
    command_lines = _command_lines()
    for secret in secrets:
        assert secret not in logs
        assert not [argv for argv in command_lines if secret in argv]


def test_a_model_container_can_reach_neither_redis_nor_its_siblings(stack, docker_engine):
    """From inside a pool container (uid 10001, host network): Redis wants a password,
    and a sibling model server wants its own key."""
    with stack.client("acme") as client:
        wait_for_pool(client, idle=1)
        job = chat(client, "my name is Ada")  # a sibling whose memory holds a conversation
        assert job["status"] == "succeeded"
        wait_for_pool(client, idle=1)
    containers = {c.id: c for c in _containers(stack)}
    sibling = containers[job["result"]["greenroom"]["container"]]
    inside = next(c for c in containers.values() if c.state == "idle")
    redis_port = urlsplit(stack.redis_url).port
    probe = ("import socket; s = socket.create_connection(('127.0.0.1', %d)); "
             "s.sendall(b'PING\\r\\n'); print(s.recv(64).decode())" % redis_port)
    answer = docker_engine.containers.get(inside.id).exec_run(["python3", "-c", probe]).output.decode()
    assert answer.startswith("-NOAUTH"), answer
    request = ("import urllib.request, urllib.error\n"
               f"r = urllib.request.Request('{sibling.endpoint}/v1/chat/completions', method='POST',\n"
               "    data=b'{\"messages\": [{\"role\": \"user\", \"content\": \"what is my name?\"}]}',\n"
               "    headers={'Content-Type': 'application/json'})\n"
               "try:\n    print(urllib.request.urlopen(r).status)\n"
               "except urllib.error.HTTPError as e:\n    print(e.code)\n")
    status = docker_engine.containers.get(inside.id).exec_run(["python3", "-c", request]).output.decode().strip()
    assert status == "401", status


def test_model_servers_listen_on_loopback_only(stack, docker_engine):
    with stack.client("acme") as client:
        wait_for_pool(client, idle=1)
    owner = f"greenroom.owner={stack.env['GREENROOM_DEPLOYMENT']}"
    ports = {int(c.labels["greenroom.port"]) for c in docker_engine.containers.list(filters={"label": owner})}
    assert ports
    listening = _listening_sockets()
    for port in ports:
        assert listening.get(port) == {"127.0.0.1"}, listening.get(port)


def test_the_api_never_holds_the_docker_socket(stack):
    """After serving every kind of request, no process of the API (gunicorn and its
    workers) has a connection to a Docker daemon's socket, while the pool worker, which
    runs the containers, does (the check can see one)."""
    with stack.client("admin") as admin:
        wait_for_pool(admin, idle=1)
        job = chat(admin, "hello")
        assert job["status"] == "succeeded", job
        assert admin.patch("/v1/pools/chatbot", json={"target_idle": 1}).status_code == 200
        for path in ("/v1/pools", f"/v1/sessions/{job['session_id']}", "/metrics", "/readyz"):
            assert admin.get(path).status_code == 200, path
        admin.delete(f"/v1/sessions/{job['session_id']}")
    connected = _docker_clients()
    api = [pid for pid in _group(stack.processes["api"].pid)]
    assert len(api) >= 2, api  # the gunicorn master and its worker
    assert not {pid: held for pid in api if (held := _sockets(pid) & connected)}
    assert any(_sockets(pid) & connected for pid in _group(stack.processes["pool"].pid))


def _containers(stack) -> list:
    state = PoolState(connect_redis(stack.redis_url), stack.env["GREENROOM_DEPLOYMENT"])
    return list(state.containers("chatbot").values())


def _command_lines() -> list[str]:
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue  # ended meanwhile
    return lines


def _listening_sockets() -> dict[int, set[str]]:
    """port -> local addresses in LISTEN state, from /proc/net/tcp and tcp6 (host network)."""
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":
                continue
            address, port = local.split(":")
            found.setdefault(int(port, 16), set()).add(_address(address))
    return found


def _address(hex_address: str) -> str:
    if len(hex_address) == 8:
        return ".".join(str(b) for b in reversed(bytes.fromhex(hex_address)))
    return "::" if int(hex_address, 16) == 0 else hex_address


DOCKER_SOCKET = re.compile(r"/docker[^/]*\.sock$")


def _docker_clients() -> set[int]:
    """Socket inodes of the client ends of every connection to a Docker daemon's socket
    (`ss` lists the daemon's ends, bound to the socket's path, with their peers' inodes)."""
    if not shutil.which("ss"):
        require("`ss` (iproute2) is needed to see who holds the Docker socket")
    rows = subprocess.run(["ss", "-xn"], capture_output=True, text=True, check=True).stdout.splitlines()[1:]
    return {int(fields[7]) for fields in map(str.split, rows) if len(fields) >= 8 and DOCKER_SOCKET.search(fields[4])}


def _group(pgid: int) -> list[int]:
    """Every process of a process group (a program and its children)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found.append(int(stat.parent.name))
    return found


def _sockets(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes
