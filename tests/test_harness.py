"""The harness's own promise: a test that needs Docker (or a restartable dockerd) skips
where it is missing, and fails instead where the run promised it
(GREENROOM_REQUIRE_DOCKER=1, as `make test` and .ci/run set). Nothing here touches the
engine: tests/test_faults_docker.py's refusal is checked without restarting anything."""

import pytest

import faultkit
from conftest import require
from faultkit import DockerDaemon, dockerd_restart_refusal

pytestmark = pytest.mark.timeout(30)
SKIPPED, FAILED = pytest.skip.Exception, pytest.fail.Exception


def outcome(call) -> tuple[type, str]:
    """How call() ended: skipped or failed, and why. (Caught here: a skip escaping a
    pytest.raises(FAILED) would mark this test skipped, not failed.)"""
    try:
        call()
    except (SKIPPED, FAILED) as exc:
        return type(exc), str(exc)
    raise AssertionError("neither skipped nor failed")


@pytest.mark.parametrize("required, expected", [("1", FAILED), ("0", SKIPPED), (None, SKIPPED)])
def test_require_skips_unless_docker_was_promised(monkeypatch, required, expected):
    if required is None:
        monkeypatch.delenv("GREENROOM_REQUIRE_DOCKER", raising=False)
    else:
        monkeypatch.setenv("GREENROOM_REQUIRE_DOCKER", required)
    ended, why = outcome(lambda: require("no engine here"))
    assert ended is expected and "no engine here" in why


@pytest.mark.parametrize("pids, euid, supervised, refusal", [
    (["41"], 0, False, None),
    (["41"], 1000, False, "needs root"),
    ([], 0, False, "exactly one local dockerd, found 0"),
    (["41", "42"], 0, False, "exactly one local dockerd, found 2"),  # a second engine beside the first
    (["41"], 0, True, "supervised by systemd"),
])
def test_when_dockerd_cannot_be_restarted_safely(pids, euid, supervised, refusal):
    found = dockerd_restart_refusal(pids, euid, supervised)
    assert found is None if refusal is None else refusal in found


@pytest.mark.parametrize("required, expected", [("1", FAILED), ("0", SKIPPED)])
def test_the_docker_restart_test_fails_rather_than_skips_where_docker_was_promised(monkeypatch, required, expected):
    """DockerDaemon.find (the dockerd fixture's first step) as a non-root user: it
    refuses before it looks at, let alone stops, any daemon."""
    monkeypatch.setenv("GREENROOM_REQUIRE_DOCKER", required)
    monkeypatch.setattr(faultkit.os, "geteuid", lambda: 1000)
    ended, why = outcome(DockerDaemon.find)
    assert ended is expected and "needs root" in why
