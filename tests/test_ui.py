"""The pool page (GET /ui): in a real browser, headless Chromium from Debian's packages
driven by selenium through Debian's chromedriver, against a real API, chat and pool
workers and beat on a real Redis, with the process runtime (containers are not the point
here). Also its sign-in over plain HTTP, and the read-only view behind it
(pool_manager/board.py) on a real Redis.

The browser test saves screenshots to GREENROOM_ARTIFACTS (default .artifacts/).
"""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import redis

from api.ui_sessions import UiSessions
from pool_manager.board import PoolBoards
from pool_manager.lifecycle import Lifecycle
from pool_manager.line import WaitingLine
from pool_manager.metrics import Metrics
from pool_manager.overview import PoolOverview
from pool_manager.ports import PortAllocator
from pool_manager.settings import REFERENCE_SERVER, load_settings, reference_pool
from pool_manager.specs import PoolSpecs
from pool_manager.state import Container, PoolState, connect_redis
from stack import TOKENS, Stack, chat, wait_for_pool
from conftest import wait_until

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("GREENROOM_ARTIFACTS", REPO / ".artifacts"))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TARGET_IDLE, MAX_TOTAL = 3, 5
# Sessions hold their containers (no closing for the line before 300 s), so that at
# max_total later sessions wait in line, and the page shows the line.
POOL = {"command": [sys.executable, str(REFERENCE_SERVER)], "runtime": "process", "target_idle": TARGET_IDLE,
        "max_total": MAX_TOTAL, "session_min_idle_s": 300, "env": {"BOOT_SECONDS": "1"}}
LIVE_S = 10  # "within a couple of seconds": generous on a shared machine; the page polls every second


@pytest.fixture(scope="module")
def stack(redis_url, tmp_path_factory):
    running = Stack(redis_url, "ui", tmp_path_factory.mktemp("ui"), POOL)
    try:
        running.start("api", "chat", "pool", "beat")
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser():
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: `bash scripts/setup.sh packages` (or `make test`) installs it")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="greenroom-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1100", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def tiles(driver, state: str) -> list[str]:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return [e.get_attribute("data-id") for e in driver.find_elements(By.CSS_SELECTOR, f".tile[data-state={state}]")]
    except StaleElementReferenceException:  # redrawn meanwhile: read again
        return tiles(driver, state)


def sign_in(driver, api_url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{api_url}/ui")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()


def test_the_page_in_a_browser(stack, browser, request):
    """Signed in with the admin token the page shows one idle tile per target_idle; a claim
    turns a tile to assigned without a reload; sessions past max_total show in the line
    with their places; a wrong or a non-admin token gets the form; signing out ends the
    session on the server too."""
    from selenium.webdriver.common.by import By

    try:
        with stack.client("acme") as client:
            wait_for_pool(client, idle=TARGET_IDLE, warming=0)
            sign_in(browser, stack.api_url, TOKENS["admin"])
            wait_until(lambda: len(tiles(browser, "idle")) == TARGET_IDLE, LIVE_S, message="the idle tiles")
            assert tiles(browser, "assigned") == []
            browser.execute_script("window.greenroomNoReload = true")  # a reload would drop it

            job = chat(client, "Hello from the page test", session_id="ui-first")
            assert job["status"] == "succeeded", job
            claimed = job["result"]["greenroom"]["container"]
            wait_until(lambda: tiles(browser, "assigned") == [claimed], LIVE_S, message="the claimed tile")
            assert browser.execute_script("return window.greenroomNoReload") is True
            assert browser.find_element(By.CSS_SELECTOR, f".tile[data-id='{claimed}'] .session").text == "acme/ui-first"
            screenshot(browser, "pool-page-claimed")

            # fill the pool to max_total, then two more sessions wait in line
            for i in range(MAX_TOTAL - 1):
                assert chat(client, "hi", session_id=f"ui-fill-{i}")["status"] == "succeeded"
            waiting = [client.post("/v1/jobs", json=_job("ui-wait-acme")).json()["id"]]
            wait_until(lambda: client.get(f"/v1/jobs/{waiting[0]}").json()["status"] == "waiting_for_container",
                       LIVE_S, message="the first job in line")
            with stack.client("globex") as other:
                waiting.append(other.post("/v1/jobs", json=_job("ui-wait-globex")).json()["id"])
            wait_until(lambda: _line(browser) == [("1", "acme", waiting[0]), ("2", "globex", waiting[1])], LIVE_S,
                       message="the line on the page")
            assert len(tiles(browser, "assigned")) == MAX_TOTAL
            screenshot(browser, "pool-page")
            figures = _metrics(httpx.get(f"{stack.api_url}/metrics").text)  # the same line, for Prometheus
            assert figures['greenroom_tenant_waiting_jobs{pool="chatbot",tenant="acme"}'] == 1
            assert figures['greenroom_tenant_waiting_jobs{pool="chatbot",tenant="globex"}'] == 1
            assert figures['greenroom_oldest_waiting_job_seconds{pool="chatbot"}'] > 0

        credential = browser.get_cookie("greenroom_ui")["value"]
        assert credential not in TOKENS.values()
        browser.find_element(By.CSS_SELECTOR, "header form button").click()  # sign out
        wait_until(lambda: browser.find_elements(By.ID, "login"), LIVE_S, message="the form after signing out")
        assert browser.get_cookie("greenroom_ui") is None
        cookie = {"Cookie": f"greenroom_ui={credential}"}
        assert httpx.get(f"{stack.api_url}/ui/state", headers=cookie).status_code == 401  # ended server-side

        for token, message in (("not-the-token-0123456789", "That token is not valid."),
                               (TOKENS["acme"], "The pool page needs an admin's token.")):
            sign_in(browser, stack.api_url, token)
            wait_until(lambda: browser.execute_script(  # read in one step: the form's answer is a new page
                "return document.getElementById('login-error')?.textContent") == message, LIVE_S,
                message=f"the sign-in error {message!r}")
            assert browser.get_cookie("greenroom_ui") is None
            assert not browser.find_elements(By.CSS_SELECTOR, ".tile")
        screenshot(browser, "pool-page-sign-in")
    except BaseException:
        screenshot(browser, f"failed-{request.node.name}")
        print(stack.logs())
        raise


def _metrics(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def _job(session_id: str) -> dict:
    return {"model": "chatbot", "session_id": session_id, "messages": [{"role": "user", "content": "waiting"}]}


def _line(driver) -> list[tuple[str, ...]]:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return [tuple(td.text for td in (row.find_elements(By.TAG_NAME, "td")[:3]))
                for row in driver.find_elements(By.CSS_SELECTOR, ".pool tbody tr")]
    except StaleElementReferenceException:
        return _line(driver)


# ------------------------------------------------------------------ sign-in over HTTP

def test_sign_in_sets_a_secure_session_cookie_that_is_not_the_token(stack):
    with httpx.Client(base_url=stack.api_url) as client:
        assert client.get("/ui").status_code == 401 and 'id="login"' in client.get("/ui").text
        signed = client.post("/ui/login", data={"token": TOKENS["admin"]})
        assert signed.status_code == 303 and signed.headers["Location"] == "/ui"
        cookie = signed.headers["Set-Cookie"]
        for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/ui"):
            assert attribute in cookie, cookie
        assert TOKENS["admin"] not in cookie
        credential = signed.cookies["greenroom_ui"]
        # sent by hand: httpx keeps a Secure cookie for https only (a browser, on localhost too)
        page = client.get("/ui", headers={"Cookie": f"greenroom_ui={credential}"})
        assert page.status_code == 200 and 'id="pools"' in page.text
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        state = client.get("/ui/state", headers={"Cookie": f"greenroom_ui={credential}"}).json()
        assert state["tenant"] == "admin" and [p["name"] for p in state["pools"]] == ["chatbot"]
        assert client.get("/ui/state", headers={"Cookie": f"greenroom_ui={credential}x"}).status_code == 401
        assert client.get("/v1/pools", headers={"Cookie": f"greenroom_ui={credential}"}).status_code == 401  # /ui only

    with redis.Redis.from_url(stack.redis_url, decode_responses=True) as store:
        stored = [k for k in store.scan_iter(f"greenroom:{stack.deployment}:ui-session:*")]
        assert stored and not any(credential in key for key in stored)
        assert not any(credential in str(store.hgetall(key)) for key in stored)


def test_the_state_needs_an_admin(stack):
    def get(token: str | None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{stack.api_url}/ui/state", headers=headers)

    assert get(None).status_code == 401
    assert get("wrong-token-0123456789").status_code == 401
    assert get(TOKENS["acme"]).status_code == 403

    def board_with_a_boot():  # run alone, the stack may still be booting
        board = get(TOKENS["admin"]).json()
        return board if board["pools"][0]["events"] else None

    board = wait_until(board_with_a_boot, 30, message="a boot on the board")
    assert board["pools"][0]["target"]["idle"] == TARGET_IDLE
    assert {e["kind"] for e in board["pools"][0]["events"]} == {"booted"}  # the boots so far


def test_a_session_ends_when_its_token_is_no_longer_configured(redis_url, deployment):
    client = connect_redis(redis_url)
    sessions = UiSessions(client, deployment)
    tokens = {"d1gest": "admin"}
    credential = sessions.open("admin", "d1gest")
    assert sessions.tenant(credential, tokens) == "admin"
    assert sessions.tenant(credential, {"other": "admin"}) is None  # the token was removed (or rotated)
    assert sessions.tenant(credential + "x", tokens) is None
    sessions.close(credential)
    assert sessions.tenant(credential, tokens) is None
    client.close()


def test_up_prints_the_pool_page(capsys, tmp_path):
    from cli.up import _print_welcome

    _print_welcome(load_settings(api_port=8181), tmp_path / "secrets.env", {"GREENROOM_TOKEN": "x"})
    assert "http://127.0.0.1:8181/ui" in capsys.readouterr().out


# ------------------------------------------------------------------ the read-only view (board.py)

@pytest.fixture
def board_parts(redis_url, deployment):
    settings = load_settings(deployment=deployment, redis_url=redis_url,
                             pools={"chatbot": reference_pool(runtime="process", target_idle=2)})
    client = connect_redis(redis_url)
    yield settings, client, PoolState(client, deployment)
    for key in client.scan_iter(f"greenroom:{deployment}:*"):
        client.delete(key)
    client.close()


def test_tiles_follow_the_records_and_a_removal_reads_retiring(board_parts):
    settings, client, state = board_parts
    now = time.time()
    made = [Container(f"gr-chatbot-{i}", "chatbot", s, 20000 + i, "http://x", now - 10 + i, "k")
            for i, s in enumerate(("warming", "idle", "idle"))]
    for container in made:
        state.add(container)
    boards = PoolBoards(settings, client)
    assert [(t.id, t.state, t.engine) for t in boards.board("admin").pools[0].tiles] == [
        ("gr-chatbot-0", "warming", "local"), ("gr-chatbot-1", "idle", "local"), ("gr-chatbot-2", "idle", "local")]
    state.mark_gone(made[1])  # as Lifecycle.destroy does while the runtime removes it
    pool = boards.board("admin").pools[0]
    assert [(t.id, t.state) for t in pool.tiles][1] == ("gr-chatbot-1", "retiring")
    assert (pool.counts.idle, pool.counts.retiring) == (1, 1)
    state.forget(made[1])
    assert [t.id for t in boards.board("admin").pools[0].tiles] == ["gr-chatbot-0", "gr-chatbot-2"]


def test_a_status_read_while_a_container_is_marked_gone_counts_it_nowhere(board_parts):
    """The status lists a pool's ids, then reads their records: a record marked gone in
    between (a removal, a lost engine) is in no state. It once answered 500 (KeyError 'gone')."""
    settings, client, state = board_parts
    made = Container("gr-chatbot-0", "chatbot", "idle", 20000, "http://x", time.time(), "k")
    state.add(made)
    client.hset(state.keys.container(made.id), "state", "gone")  # mark_gone's record step, before its zrem
    status = PoolOverview(settings, client).status("chatbot")
    assert [(e.name, e.idle) for e in status.engines] == [("local", 0)]


def test_the_line_reads_in_the_fair_order_the_claim_counts(board_parts):
    settings, client, state = board_parts
    line = WaitingLine(client, state.keys, settings.line_max_age_s)
    arrivals = [("acme", "a1"), ("acme", "a2"), ("acme", "a3"), ("globex", "g1"), ("initech", "i1"), ("globex", "g2")]
    for tenant, job in arrivals:
        line.join("chatbot", tenant, job)
        time.sleep(0.002)  # distinct arrival times
    order = [job for job, _, _ in line.in_order("chatbot")]
    assert order == ["a1", "g1", "i1", "a2", "g2", "a3"]  # round robin across tenants
    for position, (job, tenant, _) in enumerate(line.in_order("chatbot"), 1):
        assert line.place("chatbot", tenant, job) == position  # the Lua script's count agrees
    entries = PoolBoards(settings, client).board("admin").pools[0].line
    assert [(e.position, e.job_id) for e in entries] == list(enumerate(order, 1))


def test_the_target_says_where_it_comes_from(board_parts):
    settings, client, state = board_parts
    boards = PoolBoards(settings, client)
    target = boards.board("admin").pools[0].target
    assert (target.idle, target.source) == (2, "configured") and "as configured" in target.why
    PoolSpecs(settings, state).scale("chatbot", target_idle=4)
    target = boards.board("admin").pools[0].target
    assert (target.idle, target.configured_idle, target.source) == (4, 2, "override")
    assert "set at run time" in target.why and "target_idle 2" in target.why


def test_boots_and_failed_boots_are_logged_newest_first(board_parts):
    settings, client, state = board_parts
    lifecycle = Lifecycle(state, PortAllocator(client, settings.port_range), Metrics(client, settings.deployment),
                          settings.boot_backoff_s)
    booted = Container("gr-chatbot-b", "chatbot", "warming", 20001, "http://x", time.time() - 2, "k")
    state.add(booted)
    assert lifecycle.promote(booted, "http://x")
    lifecycle.count_failure(Container("gr-chatbot-f", "chatbot", "warming", 20002, "http://x", time.time() - 5, "k"))
    events = PoolBoards(settings, client).board("admin").pools[0].events
    assert [(e.kind, e.container) for e in events] == [("failed", "gr-chatbot-f"), ("booted", "gr-chatbot-b")]
    assert events[0].seconds >= 5 and 2 <= events[1].seconds < 5


def test_claims_of_the_last_minutes_count_warm_ones_apart(board_parts):
    settings, client, _ = board_parts
    metrics = Metrics(client, settings.deployment)
    for wait in (0.0, 0.0, 0.0, 2.0):
        metrics.observe("claim_wait_seconds", "chatbot", wait)
    slots = PoolBoards(settings, client).board("admin").pools[0].slots
    busy = [s for s in slots if s.claims]
    assert len(slots) == 60 and len(busy) in (1, 2)  # a slot boundary may fall between the claims
    assert sum(s.claims for s in busy) == 4 and sum(s.warm for s in busy) == 3
    assert max(s.wait_p95_s for s in busy) == 2.5  # the bucket holding 2.0 s
