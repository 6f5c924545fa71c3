"""Logs an operator can read: `greenroom up` (its real Procfile: API, both workers, beat,
Flower, on its own Redis and ports) writes what changed, one line each, and nothing while
nothing happens; --verbose brings back Celery's line per task and per beat tick.

The windows are scaled down for CI (QUIET_S, BUSY_S; each spans at least two beat ticks):
`python tests/logtraffic.py --quiet 60 --busy 60` counts a whole minute of each.
"""

import logging
import re
import time

import httpx
import pytest

from conftest import wait_until
from logtraffic import UpStack, busy
from workers import oplog

pytestmark = pytest.mark.timeout(240)
QUIET_S = 12
BUSY_S = 12
# Every line a busy window may write (after the timestamp and program name).
WHAT_CHANGED = re.compile(r"INFO/MainProcess\] pool \w+: gr-\w+-\w+ (ready in [\d.]+s|removed)$"
                          r"|(INFO|WARNING)/MainProcess\] job \S+ \(tenant \w+, model \w+\) failed: .*$")


@pytest.fixture
def quiet_stack(tmp_path):
    with UpStack(tmp_path / "up") as stack:
        yield stack


def test_a_quiet_window_writes_nothing_and_a_busy_one_what_changed(quiet_stack):
    stack = quiet_stack
    quiet = _lines_during(stack, lambda: time.sleep(QUIET_S))
    assert quiet == [], quiet  # beat ticked at least twice, reconciles ran: no line

    did = {}
    lines = _lines_during(stack, lambda: did.update(busy(stack, BUSY_S)))
    print(f"greenroom up: {len(quiet)} lines in {QUIET_S}s quiet, {len(lines)} in {BUSY_S}s busy ({did})")
    text = "\n".join(lines)
    assert did["sessions"] >= 2 and did["cancelled"] == did["send_task_refused"] == did["lost"] == 1, did
    assert [line for line in lines if not WHAT_CHANGED.search(line)] == [], text
    assert "Traceback" not in text and " received" not in text and "succeeded in" not in text
    client_error = [line for line in lines if "unknown_model" in line]
    assert len(client_error) == 1 and "INFO/" in client_error[0], text  # the client's mistake: INFO
    ours = [line for line in lines if "container_lost" in line]
    assert len(ours) == 1 and "WARNING/" in ours[0], text  # ours: a WARNING
    assert not [line for line in lines if "cancelled" in line], text  # the client's doing: counted, not logged
    assert len(lines) <= 6 + 3 * did["sessions"], text  # boots and removals, one line each
    metrics = httpx.get(f"{stack.api_url}/metrics").text
    assert 'greenroom_jobs_total{outcome="cancelled",pool="slowbot"} 1.0' in metrics


def test_verbose_logs_every_task_and_beat_tick(tmp_path):
    with UpStack(tmp_path / "up", verbose=True) as stack:
        lines = _lines_during(stack, lambda: time.sleep(QUIET_S))
    text = "\n".join(lines)
    assert "Scheduler: Sending due task reconcile-pools" in text
    assert re.search(r"Task greenroom\.pool\.reconcile\[[^]]+\] received", text), text
    assert re.search(r"Task greenroom\.pool\.reconcile\[[^]]+\] succeeded in", text), text


def test_a_pool_turning_degraded_and_whole_is_told_once_each(make_manager, caplog):
    """Boots that crash make the pool degraded: one WARNING however many passes see it;
    a boot that succeeds makes it whole: one INFO."""
    manager = make_manager("process", target_idle=1, env={"FAULT_CRASH_AT_BOOT": "1"},
                           settings={"boot_backoff_s": (0.05, 0.05)})
    caplog.set_level(logging.INFO, logger="greenroom")

    def told(word: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "greenroom" and word in r.getMessage()]

    wait_until(lambda: oplog.reconcile(manager, "chatbot") is not None and told("degraded"), 30, interval=0.1,
               message="the pool degraded")
    for _ in range(3):
        oplog.reconcile(manager, "chatbot")
    assert told("degraded") == ["pool chatbot degraded: its last boots all failed; the next ones back off"]
    assert [r.levelno for r in caplog.records if "degraded" in r.getMessage()] == [logging.WARNING]
    manager.state.boot_succeeded("chatbot")  # as a boot that became healthy does
    oplog.reconcile(manager, "chatbot")
    oplog.reconcile(manager, "chatbot")
    assert told("whole") == ["pool chatbot whole again"]


def _lines_during(stack: UpStack, action) -> list[str]:
    start = len(stack.lines())
    action()
    return stack.lines()[start:]
