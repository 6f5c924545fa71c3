"""What an attacker would try: pickled messages, tokens in logs, exposed model ports."""

import os
import pickle
import uuid
from pathlib import Path

import pytest

from conftest import wait_until
from pool_manager.jobs import JobStore
from pool_manager.settings import load_settings
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


def test_no_token_appears_in_any_log(stack):
    with stack.client("acme") as client:
        wait_for_pool(client, idle=1)
        assert chat(client, "hello")["status"] == "succeeded"
        client.get("/v1/jobs/nope")
    logs = stack.logs()
    for token in TOKENS.values():
        assert token not in logs


def test_model_servers_listen_on_loopback_only(stack, docker_engine):
    with stack.client("acme") as client:
        wait_for_pool(client, idle=1)
    owner = f"greenroom.owner={stack.env['GREENROOM_DEPLOYMENT']}"
    ports = {int(c.labels["greenroom.port"]) for c in docker_engine.containers.list(filters={"label": owner})}
    assert ports
    listening = _listening_sockets()
    for port in ports:
        assert listening.get(port) == {"127.0.0.1"}, listening.get(port)


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
