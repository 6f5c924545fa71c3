"""Flower against the project's Celery app (Celery 5.7 is newer than Flower's own test
matrix): `greenroom flower` and a real `greenroom worker`, as subprocesses."""

import json
import os
import secrets
import sys
from pathlib import Path

import httpx
import pytest

from bench.stack import start_program, stop_process_group
from conftest import free_port, wait_until

GREENROOM = str(Path(sys.executable).parent / "greenroom")
USER, PASSWORD = "ops", secrets.token_urlsafe(16)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def stack(request, redis_url, deployment, tmp_path):
    """A Flower and a maintenance worker (uniquely named) on the test Redis."""
    port = free_port()
    worker_name = f"pool-{deployment}@flowertest"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENROOM_", "FLOWER_"))}
    env |= {"GREENROOM_REDIS_URL": redis_url, "GREENROOM_DEPLOYMENT": deployment,
            "GREENROOM_STATE_DIR": str(tmp_path / "state"), "GREENROOM_FLOWER_PORT": str(port),
            "GREENROOM_FLOWER_USER": USER, "GREENROOM_FLOWER_PASSWORD": PASSWORD,
            "GREENROOM_POOLS": json.dumps({"chatbot": {"command": ["true"], "runtime": "process", "target_idle": 0}})}
    logs = {name: tmp_path / f"{name}.log" for name in ("flower", "worker")}
    processes = [start_program([GREENROOM, "flower"], env, logs["flower"]),
                 start_program([GREENROOM, "worker", "--queue", "pool", "--name", worker_name], env,
                               logs["worker"])]
    yield {"url": f"http://127.0.0.1:{port}", "worker": worker_name, "processes": processes}
    for process in processes:
        stop_process_group(process)
    if getattr(request.node, "report_call", None) and request.node.report_call.failed:
        for name, log in logs.items():
            print(f"--- {name} log ---\n{log.read_text(errors='replace')}")


def _get(url: str, auth=None) -> httpx.Response | None:
    try:
        return httpx.get(url, auth=auth, timeout=5)
    except httpx.TransportError:
        return None


def test_flower_asks_for_credentials_and_lists_the_worker(stack):
    api = f"{stack['url']}/api/workers"
    wait_until(lambda: _get(api) is not None, 30, interval=0.2, message="Flower to listen")
    assert _get(api).status_code == 401
    assert _get(api, auth=(USER, "wrong")).status_code == 401

    def listed():
        response = _get(f"{api}?refresh=1", auth=(USER, PASSWORD))
        return response is not None and response.status_code == 200 and stack["worker"] in response.json()

    wait_until(listed, 30, interval=0.5, message=f"{stack['worker']} in /api/workers")


def test_flower_is_read_only_and_keeps_the_password_off_the_command_line(stack):
    flower = stack["processes"][0]
    api = f"{stack['url']}/api/worker/shutdown/{stack['worker']}"
    wait_until(lambda: _get(stack["url"] + "/healthcheck") is not None, 30, interval=0.2, message="Flower")
    response = httpx.post(api, auth=(USER, PASSWORD), timeout=10)
    assert response.status_code == 403  # read-only: no shutdown, revoke, pool or rate changes
    assert stack["processes"][1].poll() is None  # the worker is still running
    cmdline = Path(f"/proc/{flower.pid}/cmdline").read_bytes()
    assert PASSWORD.encode() not in cmdline
