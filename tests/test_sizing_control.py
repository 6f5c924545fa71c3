"""Where a pool's target comes from, and the operator's handles on it, as users run them:
`greenroom pool scale` (a number, auto, --reset), PATCH /v1/pools/<name> (null drops a
run-time setting), `greenroom pool rollout` and POST /v1/pools/<name>/rollout, and what
`greenroom pool status` and GET /v1/pools/<name> say. Real Redis, the real API and CLI
as subprocesses; a real pool on the process runtime for the rollout."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_until
from pool_manager.settings import REFERENCE_SERVER
from stack import Stack

pytestmark = pytest.mark.timeout(120)
GREENROOM = str(Path(sys.executable).parent / "greenroom")
POOL_TOML = {"command": [sys.executable, str(REFERENCE_SERVER)], "runtime": "process", "target_idle": 0,
             "max_total": 6}


def greenroom(*args, env, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([GREENROOM, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def api(redis_url, tmp_path):
    """The API alone (no workers: the reconciles changes ask for stay queued)."""
    stack = Stack(redis_url, "control", tmp_path, POOL_TOML)
    stack.start("api")
    yield stack
    stack.stop()


def target(stack) -> dict:
    with stack.client("admin") as admin:
        return admin.get("/v1/pools/chatbot").json()["target"]


def test_a_run_time_override_survives_a_changed_config_says_so_and_reset_drops_it(api):
    env = api.env
    scaled = greenroom("pool", "scale", "chatbot", "--target-idle", "3", env=env)
    assert scaled.returncode == 0 and "chatbot: target_idle=3 max_total=6" in scaled.stdout, scaled.stderr
    first = target(api)
    assert (first["idle"], first["source"], first["overrides"]) == (3, "override", {"target_idle": 3})
    assert "set at run time" in first["why"] and "greenroom pool scale chatbot --reset" in first["why"]

    config = Path(env["GREENROOM_CONFIG"])  # the file changes, the API restarts: the override still wins
    config.write_text(config.read_text().replace("target_idle = 0", "target_idle = 1"))
    api.kill("api")
    api.start("api")
    after = target(api)
    assert (after["idle"], after["source"], after["configured_idle"]) == (3, "override", 1)
    assert "the configuration said target_idle 0: the override still wins" in after["why"]
    status = greenroom("pool", "status", env=env)
    assert status.returncode == 0 and "chatbot: target 3 idle: target_idle 3 set at run time" in status.stdout
    assert json.loads(greenroom("pool", "status", "--json", env=env).stdout)[0]["target"]["source"] == "override"

    both = greenroom("pool", "scale", "chatbot", "--reset", "--target-idle", "2", env=env)
    assert both.returncode == 2 and "give it alone" in both.stderr
    reset = greenroom("pool", "scale", "chatbot", "--reset", env=env)
    assert reset.returncode == 0 and "target_idle=1 max_total=6 (as configured)" in reset.stdout, reset.stderr
    dropped = target(api)
    assert (dropped["idle"], dropped["source"], dropped.get("overrides")) == (1, "configured", None)
    assert dropped["why"] == "as configured (target_idle 1, max_total 6)"


def test_patch_null_drops_one_setting_and_auto_is_computed(api):
    with api.client("admin") as admin:
        both = admin.patch("/v1/pools/chatbot", json={"target_idle": 2, "max_total": 4})
        assert both.status_code == 200 and both.json()["target"]["overrides"] == {"target_idle": 2, "max_total": 4}
        one = admin.patch("/v1/pools/chatbot", json={"max_total": None}).json()
        assert (one["max_total"], one["target"]["overrides"], one["target_idle"]) == (6, {"target_idle": 2}, 2)
        assert admin.patch("/v1/pools/chatbot", json={"target_idle": "two"}).status_code == 422
        assert admin.patch("/v1/pools/chatbot", json={"min_idle": 9}).status_code == 422  # above max_total
        auto = admin.patch("/v1/pools/chatbot", json={"target_idle": "auto", "min_idle": 2}).json()["target"]
        assert (auto["setting"], auto["source"], auto["idle"]) == ("auto", "computed", 2)  # min_idle until a pass
        assert auto["why"].startswith("auto: not computed yet")
        gone = admin.patch("/v1/pools/chatbot", json={"target_idle": None, "min_idle": None}).json()["target"]
        assert (gone["source"], gone["setting"], gone.get("overrides")) == ("configured", 0, None)
    with api.client("acme") as tenant:
        assert tenant.patch("/v1/pools/chatbot", json={"target_idle": None}).status_code == 403


def test_rollout_over_http_needs_an_admin_and_changes_the_spec_hash(api):
    with api.client("admin") as admin:
        before = admin.get("/v1/pools/chatbot").json()["spec_hash"]
        with api.client("acme") as tenant:
            assert tenant.post("/v1/pools/chatbot/rollout").status_code == 403
        assert admin.post("/v1/pools/nope/rollout").status_code == 404
        asked = admin.post("/v1/pools/chatbot/rollout")
        assert asked.status_code == 202 and asked.json()["spec_hash"] != before


def test_pool_rollout_from_the_cli_and_pool_status_shows_old_and_new(make_manager, redis_url, deployment, tmp_path):
    manager = make_manager("process", target_idle=2, env={"BOOT_SECONDS": "5"})  # long enough to see it mid-way
    manager.reconcile("chatbot")
    wait_until(lambda: manager.state.counts("chatbot")["idle"] == 2, 30, message="2 idle")
    config = tmp_path / "cli.toml"  # the CLI's view of the same deployment
    config.write_text(f'[pools.chatbot]\ncommand = {json.dumps(POOL_TOML["command"])}\nruntime = "process"\n')
    env = {"PATH": "/usr/bin:/bin", "GREENROOM_REDIS_URL": redis_url, "GREENROOM_DEPLOYMENT": deployment,
           "GREENROOM_CONFIG": str(config), "GREENROOM_STATE_DIR": str(tmp_path / "cli-state")}
    assert greenroom("pool", "rollout", "nosuch", env=env).returncode != 0
    rolled = greenroom("pool", "rollout", "chatbot", env=env)
    assert rolled.returncode == 0 and "chatbot: rolling out to spec" in rolled.stdout, rolled.stderr
    new_hash = manager.specs.spec_hash("chatbot")
    wait_until(lambda: manager.reconcile("chatbot"), 10, message="a pass")  # as the one the command asked for
    status = greenroom("pool", "status", "chatbot", env=env)
    assert f"chatbot: rolling out spec {new_hash}" in status.stdout and "old left: 2 idle" in status.stdout, status
    [row] = json.loads(greenroom("pool", "status", "chatbot", "--json", env=env).stdout)
    assert (row["rollout"], row["old"]["idle"], row["spec_hash"]) == ("rolling", 2, new_hash)

    def rolled_over():
        manager.reconcile("chatbot")
        return json.loads(greenroom("pool", "status", "--json", env=env).stdout)[0]["rollout"] == "none"

    wait_until(rolled_over, 60, interval=0.3, message="the rollout to finish")
    assert "rolling out" not in greenroom("pool", "status", env=env).stdout
