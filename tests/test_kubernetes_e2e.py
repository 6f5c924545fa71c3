"""End to end through the kubernetes runtime: the real API over HTTP, real Celery workers
and beat, Redis, and model servers as pods of the Kubernetes API emulation, run by the
test kubelet as local processes of the reference server (kube_cluster.py)."""

import pytest

from bench.stack import Stack
from conftest import RUN_ID, free_port, wait_until
from stack import TOKENS, chat, wait_for_pool

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(kube_cluster, tmp_path_factory, request):
    pool = {"image": "greenroom/chatbot:latest", "runtime": "kubernetes", "target_idle": 2, "max_total": 6,
            "port": free_port(), "env": {"BOOT_SECONDS": "1"}}
    # Its own redis-server (the shared one's databases are spoken for by the other stacks);
    # beat only every 30 s: the labels below must move on the claim's own reconcile.
    running = Stack(tmp_path_factory.mktemp("kube-stack"), pool, deployment=f"{RUN_ID}-kube", tokens=TOKENS,
                    api_args=("--workers", "1", "--threads", "16"), chat_concurrency=8, claim_timeout_s=30,
                    chat_timeout_s=10, reconcile_interval_s=30, chat_wait_s=20, **kube_cluster.settings())
    running.start("pool", "chat", "beat", "api")
    yield running
    running.stop()
    if request.session.testsfailed:
        print(running.logs())


@pytest.fixture
def acme(stack):
    with stack.client("acme") as client:
        wait_for_pool(client, idle=2)
        yield client


def pod_states(kube_cluster, stack) -> dict[str, str]:
    found = kube_cluster.pods(**{"greenroom.owner": stack.deployment})
    return {pod["metadata"]["name"]: pod["metadata"]["labels"]["greenroom.state"] for pod in found}


def test_a_chat_is_served_by_a_warm_pod_which_is_then_labelled_assigned(acme, stack, kube_cluster):
    assert sorted(pod_states(kube_cluster, stack).values()) == ["idle", "idle"]
    job = chat(acme, "hello from kubernetes")
    assert job["status"] == "succeeded", job
    reply = job["result"]
    assert 'you said "hello from kubernetes"' in reply["choices"][0]["message"]["content"]
    pod = reply["greenroom"]["container"]
    assert reply["greenroom"]["warm"] is True and reply["greenroom_container"]["instance"] == pod
    wait_until(lambda: pod_states(kube_cluster, stack).get(pod) == "assigned", 10, message="the assigned label")
    wait_until(lambda: sorted(pod_states(kube_cluster, stack).values()) == ["assigned", "idle", "idle"], 20,
               message="a replacement pod idle")


def test_a_session_keeps_its_pod_and_its_memory(acme):
    first = chat(acme, "my name is Ada")
    second = chat(acme, "what is my name?", session_id=first["session_id"])
    assert second["result"]["choices"][0]["message"]["content"] == "Your name is Ada."
    assert second["result"]["greenroom"]["container"] == first["result"]["greenroom"]["container"]


def test_closing_a_session_deletes_its_pod_and_the_pool_refills(acme, stack, kube_cluster):
    job = chat(acme, "hello")
    session, pod = job["session_id"], job["result"]["greenroom"]["container"]
    closed = acme.delete(f"/v1/sessions/{session}")
    assert closed.status_code == 200 and closed.json()["state"] == "closed"
    assert pod not in pod_states(kube_cluster, stack)  # gone once the close answered
    wait_for_pool(acme, idle=2)
