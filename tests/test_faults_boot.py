"""Model images that never boot: one that crashes at once, one that never answers healthy.
The pool is marked degraded (API and metrics), failures are counted, boots back off, and
the containers stay bounded: no crash loop. Each test prints what it saw."""

import time

import httpx
import pytest

from conftest import wait_until
from faultkit import DockerEvents, Stopwatch, deployment, report, wait_docker_matches_state
from stack import Stack

pytestmark = pytest.mark.timeout(120)
MAX_TOTAL = 4
WINDOW_S = 8  # how long boot attempts are counted once the pool is degraded
BACKOFF = (0.5, 4)


@pytest.fixture(params=[
    pytest.param(({"FAULT_CRASH_AT_BOOT": "1"}, {}), id="crash-at-boot"),
    pytest.param(({"FAULT_NEVER_HEALTHY": "1"}, {"boot_timeout_s": 2}), id="never-healthy"),
])
def failing(request, redis_url, docker_engine, tmp_path):
    env, spec = request.param
    pool = {"image": "greenroom/chatbot:latest", "runtime": "docker", "target_idle": 2, "max_total": MAX_TOTAL,
            "env": {"BOOT_SECONDS": "1"} | env} | spec
    stack = Stack(redis_url, f"boot-{request.node.callspec.id}", tmp_path, pool, reconcile_interval_s=0.5,
                  boot_backoff_s=f"[{BACKOFF[0]}, {BACKOFF[1]}]")
    yield stack
    stack.stop()
    call = getattr(request.node, "report_call", None)
    if call is None or call.failed:
        print(stack.logs())


def test_a_pool_that_cannot_boot_is_degraded_backs_off_and_stays_bounded(failing, docker_engine, request):
    events = DockerEvents(docker_engine, deployment(failing))  # before anything of the stack's exists
    clock = Stopwatch()
    try:
        failing.start("pool", "beat", "api")
        with failing.client() as client:
            wait_until(lambda: client.get("/v1/pools/chatbot").json()["degraded"], 60, interval=0.1,
                       message="the pool marked degraded")
            degraded_after = clock()
            window = (time.time(), time.time() + WINDOW_S)
            time.sleep(WINDOW_S)
            status = client.get("/v1/pools/chatbot").json()
            metrics = _metrics(httpx.get(f"{failing.api_url}/metrics").text)
    finally:
        events.close()
    created = events.times("create")
    in_window = [t for t in created if window[0] <= t <= window[1]]
    gaps = [later - earlier for earlier, later in zip(created, created[1:])]
    assert status["degraded"] is True and status["idle"] == 0, status
    assert metrics['greenroom_pool_degraded{pool="chatbot"}'] == 1
    assert status["failed"] >= 3 and metrics['greenroom_boot_failures_total{pool="chatbot"}'] >= 3, status
    assert len(created) >= status["failed"], created  # every failed boot was a container Docker saw created
    # without backoff, beat's 0.5 s tick would start two every pass: 30 or so in the window;
    # backing off to 4 s between attempts leaves room for three rounds of two at most
    assert len(in_window) <= 2 * 3, in_window
    assert max(gaps) >= BACKOFF[1] / 2, gaps  # the pauses grew towards the longest backoff
    assert events.peak() <= MAX_TOTAL, events.seen
    wait_docker_matches_state(docker_engine, failing)  # the failed ones are removed, none leaked
    report(f"boot fault: {request.node.callspec.id}", degraded_after_s=degraded_after, failed=status["failed"],
           created_total=len(created), created_in_window=f"{len(in_window)} in {WINDOW_S}s",
           gaps_s=[round(g, 1) for g in gaps], peak_containers=events.peak())


def _metrics(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}
