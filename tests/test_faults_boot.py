"""Model images that never boot: one that crashes at once, one that never answers healthy.
The pool is marked degraded (API and metrics), failures are counted, boots back off, and
the containers stay bounded: no crash loop. Each test prints what it saw."""

import threading
import time

import httpx
import pytest

from conftest import wait_until
from faultkit import Stopwatch, deployment, docker_names, report, wait_docker_matches_state
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
    created = Creations(docker_engine, failing)
    clock = Stopwatch()
    try:
        failing.start("pool", "beat", "api")
        with failing.client() as client:
            wait_until(lambda: client.get("/v1/pools/chatbot").json()["degraded"], 60, interval=0.1,
                       message="the pool marked degraded")
            degraded_after = clock()
            peak, stop = [0], threading.Event()
            sampler = threading.Thread(target=_sample_peak, args=(docker_engine, failing, peak, stop))
            sampler.start()
            window = (time.time(), time.time() + WINDOW_S)
            time.sleep(WINDOW_S)
            stop.set()
            sampler.join(5)
            status = client.get("/v1/pools/chatbot").json()
            metrics = _metrics(httpx.get(f"{failing.api_url}/metrics").text)
    finally:
        created.close()
    in_window = [t for t in created.times if window[0] <= t <= window[1]]
    gaps = [later - earlier for earlier, later in zip(created.times, created.times[1:])]
    assert status["degraded"] is True and status["idle"] == 0, status
    assert metrics['greenroom_pool_degraded{pool="chatbot"}'] == 1
    assert status["failed"] >= 3 and metrics['greenroom_boot_failures_total{pool="chatbot"}'] >= 3, status
    # without backoff, beat's 0.5 s tick would start two every pass: 30 or so in the window;
    # backing off to 4 s between attempts leaves room for three rounds of two at most
    assert len(in_window) <= 2 * 3, in_window
    assert max(gaps) >= BACKOFF[1] / 2, gaps  # the pauses grew towards the longest backoff
    assert peak[0] <= MAX_TOTAL, peak
    wait_docker_matches_state(docker_engine, failing)  # the failed ones are removed, none leaked
    report(f"boot fault: {request.node.callspec.id}", degraded_after_s=degraded_after, failed=status["failed"],
           created_total=len(created.times), created_in_window=f"{len(in_window)} in {WINDOW_S}s",
           gaps_s=[round(g, 1) for g in gaps], peak_containers=peak[0])


class Creations:
    """When each of the stack's containers was created, heard live on Docker's event
    stream (the engine keeps only its last few hundred events for later queries)."""

    def __init__(self, docker_engine, stack: Stack):
        self.times: list[float] = []
        self._stream = docker_engine.events(decode=True, filters={
            "type": "container", "event": "create", "label": f"greenroom.owner={deployment(stack)}"})
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        try:
            for event in self._stream:
                self.times.append(event["timeNano"] / 1e9)
        except Exception:  # the stream was closed under us
            pass

    def close(self) -> None:
        time.sleep(0.5)  # the last events in flight
        self._stream.close()
        self._thread.join(5)
        self.times.sort()


def _sample_peak(docker_engine, stack: Stack, peak: list, stop: threading.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], len(docker_names(docker_engine, stack, all=True)))
        stop.wait(0.1)


def _metrics(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}
