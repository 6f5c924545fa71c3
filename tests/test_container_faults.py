"""Containers that die or hang mid-job: clear errors, no leaks, the pool refills."""

from contextlib import contextmanager

import pytest

from conftest import wait_until
from stack import Stack, chat, wait_for_pool

pytestmark = pytest.mark.timeout(120)


@contextmanager
def running_stack(request, redis_url, tmp_path_factory, name: str, env: dict, **settings):
    """A stack whose pool runs the reference image with the given fault switches."""
    pool = {"image": "greenroom/chatbot:latest", "runtime": "docker", "target_idle": 1, "max_total": 6,
            "env": {"BOOT_SECONDS": "1"} | env}
    stack = Stack(redis_url, name, tmp_path_factory.mktemp(name), pool, **settings).start("pool", "chat", "api")
    try:
        yield stack
    finally:
        stack.stop()
        if request.session.testsfailed:
            print(stack.logs())


@pytest.fixture(scope="module")
def dying(redis_url, docker_engine, tmp_path_factory, request):
    with running_stack(request, redis_url, tmp_path_factory, "dying", {"FAULT_EXIT_AFTER_REPLIES": "1"}) as stack:
        yield stack


def test_a_container_that_dies_gives_container_lost_to_the_next_message(dying, docker_engine):
    with dying.client() as client:
        wait_for_pool(client, idle=1)
        first = chat(client, "hello")
        assert first["status"] == "succeeded"
        container = first["result"]["greenroom"]["container"]
        wait_until(lambda: docker_engine.containers.get(container).status == "exited", 10, message="exit")
        second = chat(client, "are you there?", session_id=first["session_id"])
        assert second["status"] == "failed"
        assert second["error"]["code"] == "container_lost"
        assert client.get(f"/v1/sessions/{first['session_id']}").json()["state"] == "broken"
        wait_until(lambda: container not in [c.name for c in docker_engine.containers.list(all=True)], 10,
                   message="the dead container to be removed")
        wait_for_pool(client, idle=1)


@pytest.fixture(scope="module")
def hanging(redis_url, docker_engine, tmp_path_factory, request):
    with running_stack(request, redis_url, tmp_path_factory, "hanging", {"FAULT_HANG_REPLIES": "1"},
                       chat_timeout_s=2) as stack:
        yield stack


def test_a_hanging_container_times_out_and_is_destroyed(hanging, docker_engine):
    with hanging.client() as client:
        wait_for_pool(client, idle=1)
        job = chat(client, "hello")
        assert job["status"] == "failed" and job["error"]["code"] == "container_timeout"
        assert "2" in job["error"]["message"]
        label = {"label": f"greenroom.owner={hanging.env['GREENROOM_DEPLOYMENT']}"}
        wait_for_pool(client, idle=1, assigned=0)
        assert len(docker_engine.containers.list(all=True, filters=label)) == 1  # only the fresh idle one


@pytest.mark.parametrize("env, settings, code, message", [
    ({"FAULT_TRICKLE_SECONDS": "0.2"}, {"chat_timeout_s": 3}, "container_timeout", "took longer than 3s"),
    ({"FAULT_REPLY_PADDING": "200000"}, {"max_reply_bytes": 65536}, "model_error", "larger than 65536 bytes"),
], ids=["trickles", "too-large"])
def test_a_reply_is_bounded_in_time_and_size(request, redis_url, docker_engine, tmp_path_factory, env, settings,
                                             code, message):
    """A model that trickles its reply (a byte every 0.2 s: over a minute for the whole)
    is cut off at chat_timeout_s; one that answers too much is cut off at max_reply_bytes."""
    with running_stack(request, redis_url, tmp_path_factory, f"bounded-{code}", env, **settings) as stack, \
            stack.client() as client:
        wait_for_pool(client, idle=1)
        job = chat(client, "hello", wait=60)
        assert job["status"] == "failed" and job["error"]["code"] == code, job
        assert message in job["error"]["message"]
        assert job["finished_at"] - job["created_at"] < 30  # cut off, not read to the end (~80 s)
        wait_for_pool(client, idle=1)


def test_a_model_answering_5xx_breaks_its_session_and_counts_as_a_failure(request, redis_url, docker_engine,
                                                                          tmp_path_factory):
    with running_stack(request, redis_url, tmp_path_factory, "failing", {"FAULT_ERROR_STATUS": "503"}) as stack, \
            stack.client() as client:
        wait_for_pool(client, idle=1)
        job = chat(client, "hello")
        assert job["status"] == "failed" and job["error"]["code"] == "model_error", job
        assert "503" in job["error"]["message"]
        assert client.get(f"/v1/sessions/{job['session_id']}").json()["state"] == "broken"
        metrics = client.get("/metrics").text
        assert 'greenroom_model_failures_total{pool="chatbot"} 1.0' in metrics
        wait_for_pool(client, idle=1, assigned=0)
