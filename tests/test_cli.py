"""`greenroom` as users run it: a subprocess, real Redis, a pool on the process runtime."""

import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import docker
import httpx
import pytest
import redis

from bench.stack import start_program, stop_process_group
from conftest import free_port, wait_until
from pool_manager.overview import PoolOverview

REPO = Path(__file__).resolve().parents[1]
GREENROOM = str(Path(sys.executable).parent / "greenroom")

pytestmark = pytest.mark.timeout(120)
TOKEN = "cli-token-0123456789"


@pytest.fixture
def cli_env(redis_url, deployment, tmp_path):
    """Environment for a `greenroom` subprocess: the test Redis, a fresh deployment, a
    chatbot pool on the process runtime that keeps nothing idle."""
    config = tmp_path / "greenroom.toml"
    config.write_text(
        "[pools.chatbot]\n"
        f"command = {json.dumps([sys.executable, str(REPO / 'images/chatbot/server.py')])}\n"
        'runtime = "process"\ntarget_idle = 0\nmax_total = 3\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENROOM_", "FLOWER_"))}
    return env | {"GREENROOM_REDIS_URL": redis_url, "GREENROOM_DEPLOYMENT": deployment,
                  "GREENROOM_CONFIG": str(config), "GREENROOM_STATE_DIR": str(tmp_path / "state")}


def greenroom(*args, env, cwd=REPO, timeout=60):
    return subprocess.run([GREENROOM, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_pool_status_json_reports_counts(cli_env):
    done = greenroom("pool", "status", "--json", env=cli_env)
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["name"] == "chatbot" and row["runtime"] == "process"
    assert (row["target_idle"], row["max_total"]) == (0, 3)
    assert row["idle"] == row["warming"] == row["assigned"] == 0


def test_pool_status_shows_a_degraded_pool(cli_env, make_manager):
    """Boots that keep failing (a server that crashes at start) mark the pool degraded,
    and `greenroom pool status` says so, in its table and in --json."""
    manager = make_manager("process", target_idle=1, env={"FAULT_CRASH_AT_BOOT": "1"},
                           settings={"boot_backoff_s": (0.05, 0.05)})
    overview = PoolOverview(manager.settings, manager.redis)
    wait_until(lambda: manager.reconcile("chatbot") and overview.status("chatbot").degraded, 20, interval=0.1,
               message="three failed boots in a row")
    table = greenroom("pool", "status", env=cli_env)
    assert table.returncode == 0, table.stderr
    header, row, _, why = table.stdout.splitlines()  # the table, then where each target comes from
    assert why == "chatbot: target 0 idle: as configured (target_idle 0, max_total 3)", table.stdout
    shown = dict(zip(header.split(), row.split()))
    assert (shown["name"], shown["degraded"]) == ("chatbot", "True") and int(shown["failed"]) >= 3, table.stdout
    [as_json] = json.loads(greenroom("pool", "status", "--json", env=cli_env).stdout)
    assert as_json["degraded"] is True and as_json["failed"] >= 3


def test_pool_scale_unknown_pool_is_a_clear_error(cli_env):
    done = greenroom("pool", "scale", "nosuch", "--target-idle", "1", env=cli_env)
    assert done.returncode != 0
    assert "nosuch" in done.stderr and "Traceback" not in done.stderr



def test_pool_scale_past_max_total_is_one_line_naming_the_field(cli_env):
    done = greenroom("pool", "scale", "chatbot", "--target-idle", "50", env=cli_env)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr == "greenroom: target_idle: target_idle (50) exceeds max_total (3)\n", done.stderr

def test_bad_spec_exits_naming_the_field_without_traceback(cli_env, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[pools.chatbot]\nimage = "x"\nmem_limit = "lots"\n')
    done = greenroom("pool", "status", env=cli_env | {"GREENROOM_CONFIG": str(bad)})
    assert done.returncode != 0
    assert "pools.chatbot.mem_limit" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_flower_refuses_to_start_without_a_password(cli_env):
    done = greenroom("flower", env=cli_env)
    assert done.returncode != 0
    assert "GREENROOM_FLOWER_PASSWORD" in done.stderr and "Traceback" not in done.stderr


def test_redis_down_is_a_clear_error(cli_env):
    done = greenroom("pool", "status", env=cli_env | {"GREENROOM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert done.returncode != 0
    assert "cannot reach Redis" in done.stderr and "Traceback" not in done.stderr


def test_up_starts_redis_keeps_secrets_private_and_reuses_them(cli_env, tmp_path):
    """`up` with its own Procfile: it starts Redis, with a password, when nothing answers at
    a loopback URL; makes the credentials once (0600); hands each program only the secrets
    it needs (the API the token's digest, Flower its password, no one else either); prints
    where secrets are but not the Flower password; and stops Redis."""
    port = free_port()
    procfile = tmp_path / "Procfile"
    # The worker's exit ends the stack (honcho stops the rest): the others wait for it.
    show_env = ("import os, json; "
                "print('{name}=' + json.dumps({{k: v for k, v in os.environ.items() if 'GREENROOM' in k}}))")
    procfile.write_text(
        f"api: python3 -c \"{show_env.format(name='API')}; import time; time.sleep(60)\"\n"
        f"flower: python3 -c \"{show_env.format(name='FLOWER')}; import time; time.sleep(60)\"\n"
        "worker: greenroom pool status --json && "
        f"python3 -c \"import time; time.sleep(1); {show_env.format(name='WORKER')}\"\n")
    env = cli_env | {"GREENROOM_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    first = greenroom("up", "--procfile", str(procfile), env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    secrets_file = tmp_path / ".greenroom" / "secrets.env"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    saved = dict(line.split("=", 1) for line in secrets_file.read_text().splitlines() if not line.startswith("#"))
    assert set(saved) == {"GREENROOM_TOKEN", "GREENROOM_FLOWER_PASSWORD", "GREENROOM_REDIS_PASSWORD"}
    assert '"chatbot"' in first.stdout and "curl -s http://127.0.0.1:8080/v1/chat/completions" in first.stdout
    assert str(secrets_file) in first.stdout
    for secret in saved.values():
        assert secret not in first.stderr
    assert saved["GREENROOM_FLOWER_PASSWORD"] not in first.stdout.split("FLOWER=")[0]
    api, flower, worker = (_printed_env(first.stdout, name) for name in ("API", "FLOWER", "WORKER"))
    redis_url = f"redis://:{saved['GREENROOM_REDIS_PASSWORD']}@127.0.0.1:{port}/0"
    assert api["GREENROOM_API_KEYS"].startswith('{"admin": "sha256:')  # the digest, never the token
    assert saved["GREENROOM_TOKEN"] not in first.stdout
    assert flower["GREENROOM_FLOWER_PASSWORD"] == saved["GREENROOM_FLOWER_PASSWORD"]
    assert "GREENROOM_FLOWER_PASSWORD" not in api and "GREENROOM_API_KEYS" not in flower
    assert not {"GREENROOM_API_KEYS", "GREENROOM_FLOWER_PASSWORD", "GREENROOM_TOKEN"} & set(worker)
    assert api["GREENROOM_REDIS_URL"] == flower["GREENROOM_REDIS_URL"] == worker["GREENROOM_REDIS_URL"] == redis_url
    config = tmp_path / ".greenroom" / "redis" / "redis.conf"
    assert config.stat().st_mode & 0o777 == 0o600 and "maxmemory-policy noeviction" in config.read_text()
    assert not _answers(port)  # Redis was stopped with the stack

    second = greenroom("up", "--procfile", str(procfile), env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert secrets_file.read_text().count(saved["GREENROOM_TOKEN"]) == 1  # reused, not remade


def test_up_refuses_a_redis_that_answers_without_a_password(cli_env, tmp_path):
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                              stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: _answers(port), 10, message="redis-server")
        env = cli_env | {"GREENROOM_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        done = greenroom("up", "--procfile", str(REPO / "Procfile"), env=env, cwd=tmp_path)
        assert done.returncode != 0 and "answers without a password" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    finally:
        server.terminate()
        server.wait(10)



def test_up_uses_a_running_redis_and_stops_children_on_sigterm(cli_env, tmp_path):
    procfile = tmp_path / "Procfile"
    procfile.write_text("sleeper: echo $$ > sleeper.pid && exec sleep 300\n")
    up = subprocess.Popen([GREENROOM, "up", "--procfile", str(procfile)], env=cli_env, cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    pid_file = tmp_path / "sleeper.pid"
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, message="the Procfile's process")
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=30)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
    assert "redis: started" not in out  # the test Redis answered at the configured URL
    assert "SIGTERM received" in out
    assert not Path(f"/proc/{pid_file.read_text().strip()}").exists()  # the child was stopped too



def test_up_twice_says_one_is_running_and_starts_nothing(cli_env, tmp_path):
    """A second `up` from the same folder sees the first's lock: one line, non-zero, no
    banner, no program started."""
    procfile = tmp_path / "Procfile"
    procfile.write_text("sleeper: echo started >> started.txt && exec sleep 300\n")
    first = subprocess.Popen([GREENROOM, "up", "--procfile", str(procfile)], env=cli_env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: (tmp_path / "started.txt").exists(), 30, message="the first up's program")
        second = greenroom("up", "--procfile", str(procfile), env=cli_env, cwd=tmp_path)
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(30)
    assert second.returncode != 0 and second.stdout == "", second.stdout
    assert re.fullmatch(rf"Error: greenroom is already running from this folder \(pid {first.pid}, API \S+\): "
                        r"use it, or stop it first\n", second.stderr), second.stderr
    assert (tmp_path / "started.txt").read_text() == "started\n"


def test_up_refuses_ports_another_stack_holds(cli_env, tmp_path):
    """From another folder: the API's port answers already; one line naming it, and nothing started."""
    procfile = tmp_path / "Procfile"
    procfile.write_text("api: greenroom api\nsleeper: echo started >> started.txt && exec sleep 300\n")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = greenroom("up", "--procfile", str(procfile), env=cli_env | {"GREENROOM_API_PORT": str(port)},
                         cwd=tmp_path)
    assert done.returncode != 0 and done.stdout == "", done.stdout
    assert len(done.stderr.splitlines()) == 1 and f"http://127.0.0.1:{port} is taken" in done.stderr, done.stderr
    assert "GREENROOM_API_PORT" in done.stderr and not (tmp_path / "started.txt").exists()


@pytest.fixture
def api_stack(request, cli_env, make_manager, tmp_path):
    """`greenroom api` and `greenroom worker` (both queues); make_manager's teardown then
    destroys the model servers the workers started (same deployment and state folder)."""
    make_manager("process")
    port = free_port()
    env = cli_env | {"GREENROOM_API_PORT": str(port), "GREENROOM_API_KEYS": json.dumps({"admin": TOKEN}),
                     "GREENROOM_STATE_DIR": str(tmp_path / "process-runtime"),  # make_manager's
                     "GREENROOM_VERBOSE": "1"}  # _tasks_done reads Celery's line per task
    env["GREENROOM_CONFIG"] = str(tmp_path / "warm.toml")
    command = json.dumps([sys.executable, str(REPO / 'images/chatbot/server.py')])
    Path(env["GREENROOM_CONFIG"]).write_text(
        f'[pools.chatbot]\ncommand = {command}\n'
        'runtime = "process"\ntarget_idle = 1\nmax_total = 4\nenv = { BOOT_SECONDS = "0.2" }\n'
        # every job waits for a boot
        f'[pools.slowboot]\ncommand = {command}\nruntime = "process"\ntarget_idle = 0\nmax_total = 2\n'
        'boot_timeout_s = 600\nenv = { BOOT_SECONDS = "6" }\n'
        # a job waits until cancelled
        f'[pools.neverboots]\ncommand = {command}\nruntime = "process"\ntarget_idle = 0\nmax_total = 1\n'
        'boot_timeout_s = 900\nenv = { BOOT_SECONDS = "600" }\n'
        # a reply streamed a word at a time
        f'[pools.streamer]\ncommand = {command}\nruntime = "process"\ntarget_idle = 1\nmax_total = 2\n'
        'env = { BOOT_SECONDS = "0.2", STREAM_CHUNK_SECONDS = "0.3" }\n')
    logs = {name: tmp_path / f"{name}.log" for name in ("api", "worker")}
    processes = [start_program([GREENROOM, "api", "--workers", "1", "--threads", "8"], env, logs["api"], cwd=REPO),
                 start_program([GREENROOM, "worker"], env, logs["worker"], cwd=REPO)]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url), 30, interval=0.2, message="the API")
        yield {"url": url, "env": env, "logs": logs}
    finally:
        for process in processes:
            stop_process_group(process)
        if getattr(request.node, "report_call", None) and request.node.report_call.failed:
            for name, log in logs.items():
                print(f"--- {name} log ---\n{log.read_text(errors='replace')[-20000:]}")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False



def test_the_readmes_talk_to_it_commands_run_as_written(api_stack):
    """README, "Talk to it": from a shell without the venv on PATH, its lines run verbatim
    (activate, a one-shot chat, a kept one), from the checkout."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"### Talk to it\n.*?```sh\n(.*?)```", readme, re.S).group(1).splitlines()
    script = "\n".join(["set -e", *block[:3]])
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {k: v for k, v in api_stack["env"].items() if k != "VIRTUAL_ENV"} | {
        "PATH": path, "GREENROOM_API_URL": api_stack["url"], "GREENROOM_TOKEN": TOKEN}
    done = subprocess.run(["bash", "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("nice to meet you, Ada") == 2, done.stdout
    assert "--session" in done.stdout + done.stderr  # the kept one says how to continue it

def test_chat_one_message_then_a_conversation(api_stack):
    env, url = api_stack["env"], api_stack["url"]
    one = greenroom("chat", "--api-url", url, "--token", TOKEN, "Hello! My name is Ada.", env=env)
    assert one.returncode == 0, one.stderr
    assert "Ada" in one.stdout and "--session" not in one.stderr  # closed: nothing to continue

    talk = subprocess.run([GREENROOM, "chat"], input="My name is Bob.\nWhat is my name?\n/quit\n",
                          env=env | {"GREENROOM_API_URL": url, "GREENROOM_TOKEN": TOKEN},
                          capture_output=True, text=True, timeout=60)
    assert talk.returncode == 0, talk.stderr
    assert "Your name is Bob" in talk.stdout  # one session: the same container remembers
    # the one-shot closed its session after the reply, the conversation at /quit
    wait_until(lambda: _pool(env, "chatbot")["assigned"] == 0, 30, interval=0.5, message="no assigned container")


def test_pool_scale_and_patch_ask_for_the_reconcile_that_starts_or_retires_containers(api_stack):
    """No beat runs here, so only the reconcile a change asks for can move the pool:
    `pool scale` up (containers start), PATCH down and `pool scale` to 0 (the surplus
    idle ones are retired)."""
    env, url = api_stack["env"], api_stack["url"]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as admin:
        def pool(**expected) -> dict | None:
            status = admin.get("/v1/pools/chatbot").json()
            return status if all(status[k] == v for k, v in expected.items()) else None

        # the fill each of the two workers asks for as it starts (a pass per pool, 4 pools): all done
        wait_until(lambda: pool(idle=1, warming=0) and _tasks_done(api_stack["logs"]["worker"], {
            "greenroom.pool.reconcile_all": 2, "greenroom.pool.reconcile": 2 * 4}), 30, interval=0.2,
                   message="the first fill")
        up = greenroom("pool", "scale", "chatbot", "--target-idle", "3", env=env)
        assert up.returncode == 0 and "chatbot: target_idle=3 max_total=4" in up.stdout, up.stderr
        wait_until(lambda: pool(idle=3, warming=0, target_idle=3), 30, interval=0.1, message="3 idle")
        assert admin.patch("/v1/pools/chatbot", json={"target_idle": 1}).status_code == 200
        wait_until(lambda: pool(idle=1, warming=0), 30, interval=0.1, message="the surplus retired after PATCH")
        down = greenroom("pool", "scale", "chatbot", "--target-idle", "0", env=env)
        assert down.returncode == 0, down.stderr
        wait_until(lambda: pool(idle=0, warming=0, target_idle=0), 30, interval=0.1,
                   message="the surplus retired after pool scale")


def test_the_access_log_shows_request_lines_and_never_a_token(cli_env, tmp_path):
    """`greenroom api --access-log`: tokens travel in the Authorization header, which the
    log leaves out, whether the token is valid or not."""
    port, log = free_port(), tmp_path / "api.log"
    env = cli_env | {"GREENROOM_API_PORT": str(port), "GREENROOM_API_KEYS": json.dumps({"admin": TOKEN})}
    api = start_program([GREENROOM, "api", "--workers", "1", "--threads", "4", "--access-log"], env, log, cwd=REPO)
    url, wrong = f"http://127.0.0.1:{port}", "wrong-token-0123456789"
    try:
        wait_until(lambda: _healthy(url), 30, interval=0.2, message="the API")
        assert httpx.get(f"{url}/v1/pools", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert httpx.get(f"{url}/v1/jobs/nope", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
        assert httpx.get(f"{url}/v1/pools", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
    finally:
        stop_process_group(api)
    text = log.read_text()
    for line in ('"GET /v1/pools HTTP/1.1" 200', '"GET /v1/jobs/nope HTTP/1.1" 404', '"GET /v1/pools HTTP/1.1" 401'):
        assert line in text, text  # the log is on: each request has its line
    assert TOKEN not in text and wrong not in text


def test_chat_with_a_bad_token_fails_clearly(api_stack):
    done = greenroom("chat", "--api-url", api_stack["url"], "--token", "nope", "hi", env=api_stack["env"])
    assert done.returncode == 1
    assert "401 unauthorized" in done.stderr and "Traceback" not in done.stderr


def test_beat_keeps_its_schedule_out_of_the_cwd_and_sends_reconciles(cli_env, redis_url, tmp_path):
    """Beat on a database of its own (no worker consumes there), a short interval."""
    url = redis_url.rsplit("/", 1)[0] + "/9"
    client = redis.Redis.from_url(url)
    client.delete("greenroom.pool")
    env = cli_env | {"GREENROOM_REDIS_URL": url, "GREENROOM_RECONCILE_INTERVAL_S": "0.5"}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    beat = start_program([GREENROOM, "beat"], env, tmp_path / "beat.log", cwd=cwd)
    try:
        wait_until(lambda: client.llen("greenroom.pool") > 0, 30, interval=0.2, message="a reconcile on greenroom.pool")
    finally:
        stop_process_group(beat)
        client.delete("greenroom.pool")
    assert list(cwd.iterdir()) == []
    assert list((tmp_path / "state" / "beat").glob(f"{env['GREENROOM_DEPLOYMENT']}-schedule*"))


def test_the_compose_pool_spec_is_valid(cli_env):
    env = cli_env | {"GREENROOM_CONFIG": str(REPO / "deploy" / "greenroom.toml")}
    [row] = json.loads(greenroom("pool", "status", "--json", env=env).stdout)
    assert (row["name"], row["runtime"]) == ("chatbot", "docker")


def _pool(env: dict, name: str) -> dict:
    return next(row for row in json.loads(greenroom("pool", "status", "--json", env=env).stdout) if row["name"] == name)


def _tasks_done(log: Path, expected: dict[str, int]) -> bool:
    """The worker has received exactly this many messages of each task, and finished them."""
    text = log.read_text(errors="replace")

    def lines(task: str, outcome: str) -> int:
        return len(re.findall(rf"Task {re.escape(task)}\[[^]]+\] {outcome}", text))

    return all(lines(task, "received") == lines(task, "succeeded") == count for task, count in expected.items())


def _printed_env(output: str, name: str) -> dict:
    line = next(line for line in output.splitlines() if f"{name}={{" in line)
    return json.loads(line.split(f"{name}=", 1)[1])


def _answers(port: int) -> bool:
    """Something listens there (a Redis with a password answers too: it refuses us)."""
    try:
        return redis.Redis(port=port, socket_connect_timeout=1).ping()
    except redis.AuthenticationError:
        return True
    except redis.ResponseError as exc:
        return "NOAUTH" in str(exc)
    except redis.ConnectionError:
        return False


# ------------------------------------------------------------ greenroom chat: the first hour (issue 17)

class Terminal:
    """A process's stderr on a pseudo-terminal (so its spinner runs), read as it comes."""

    def __init__(self, argv: list[str], env: dict, **popen):
        master, slave = pty.openpty()
        self.process = subprocess.Popen(argv, env=env | {"PYTHONFAULTHANDLER": "1"}, stderr=slave,
                                        start_new_session=True, preexec_fn=_ctrl_c_reaches_it, **popen)
        os.close(slave)
        self.master, self.seen = master, b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the process closed its end
                return
            if not chunk:
                return
            self.seen += chunk

    def wait_for(self, text: str, timeout: float = 30) -> None:
        wait_until(lambda: text.encode() in self.seen, timeout, interval=0.05, message=f"{text!r} on the terminal")

    def text(self) -> str:
        return self.seen.decode(errors="replace")

    def finish(self, timeout: float = 60) -> str:
        """The process's stdout (if piped) once it ended; if it does not end, where it hangs."""
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            self.process.communicate(timeout=10)
            self._reader.join(5)
            pytest.fail(f"{self.process.args} did not end in {timeout} s:\n{self.text()}")
        self._reader.join(5)
        os.close(self.master)
        return (out or b"").decode()


def _ctrl_c_reaches_it() -> None:
    """In the child: SIGINT back to its default, which Python turns into KeyboardInterrupt. A
    test run started in the background (`cmd &`, nohup) ignores SIGINT, and children inherit
    that: `greenroom chat` would never see the Ctrl-C the test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _chat(api_stack, *args) -> list[str]:
    return [GREENROOM, "chat", "--api-url", api_stack["url"], "--token", TOKEN, *args]


def test_chat_shows_its_place_in_line_as_it_waits(api_stack):
    """Two new sessions on a pool with nothing idle: each spinner shows its job waiting for a
    container, and its place in line, while it waits (not only once the job ended)."""
    first = Terminal(_chat(api_stack, "--model", "slowboot", "Hello! My name is Ada."), api_stack["env"],
                     stdout=subprocess.PIPE)
    first.wait_for("waiting for a container, 1st in line")
    second = Terminal(_chat(api_stack, "--model", "slowboot", "Hello! My name is Bob."), api_stack["env"],
                      stdout=subprocess.PIPE)
    second.wait_for("waiting for a container, 2nd in line")
    assert first.process.poll() is None  # still waiting: seen as it happened
    assert "Ada" in first.finish() and "Bob" in second.finish()
    assert first.process.returncode == second.process.returncode == 0, first.text() + second.text()


def test_chat_prints_the_reply_as_it_arrives(api_stack):
    """A streaming model (a word every 0.3 s): the first words are on stdout while the
    rest of the reply is still on its way."""
    chat = subprocess.Popen(_chat(api_stack, "--model", "streamer", "Hello! My name is Ada."), env=api_stack["env"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = os.read(chat.stdout.fileno(), 65536).decode()  # blocks until the first words
        still_running = chat.poll() is None
        rest, err = chat.communicate(timeout=60)
    finally:
        if chat.poll() is None:
            chat.kill()
    assert chat.returncode == 0, err
    whole = first + rest.decode()
    assert still_running and first.strip() and len(first) < len(whole) - 2, (first, whole)
    assert "Ada" in whole and whole.endswith("\n")


def test_a_one_shot_chat_closes_its_session_unless_kept(api_stack):
    env = api_stack["env"]
    kept = greenroom("chat", "--api-url", api_stack["url"], "--token", TOKEN, "--keep", "Hello! My name is Ada.",
                     env=env)
    assert kept.returncode == 0, kept.stderr
    session = re.search(r"continue with --session (\S+)\)", kept.stderr).group(1)
    assert _pool(env, "chatbot")["assigned"] == 1
    again = greenroom("chat", "--api-url", api_stack["url"], "--token", TOKEN, "--session", session,
                      "What is my name?", env=env)
    assert again.returncode == 0 and "Your name is Ada" in again.stdout, again.stderr
    assert "no open session" not in again.stderr  # it existed: no warning
    assert _pool(env, "chatbot")["assigned"] == 1  # a session named with --session stays open

    closed = greenroom("chat", "--api-url", api_stack["url"], "--token", TOKEN, "Hello again!", env=env)
    assert closed.returncode == 0 and "--session" not in closed.stderr, closed.stderr
    assert _pool(env, "chatbot")["assigned"] == 1  # only the kept one


def test_a_mistyped_session_warns_that_a_new_one_started(api_stack):
    done = greenroom("chat", "--api-url", api_stack["url"], "--token", TOKEN, "--session", "nosuch-42",
                     "What is my name?", env=api_stack["env"])
    assert done.returncode == 0, done.stderr
    assert "no open session 'nosuch-42': this message starts a new session of that name" in done.stderr


def test_ctrl_c_cancels_the_job_and_says_so(api_stack):
    """One message: Ctrl-C while it waits cancels the job on the server and says so (exit
    130). In a conversation: the same, and the conversation goes on."""
    one = Terminal(_chat(api_stack, "--model", "neverboots", "Hello!"), api_stack["env"], stdout=subprocess.PIPE)
    one.wait_for("in line")
    one.process.send_signal(signal.SIGINT)
    one.finish()
    assert one.process.returncode == 130, one.text()
    job_id = re.search(r"greenroom: job (\S+) cancelled", one.text()).group(1)
    with httpx.Client(base_url=api_stack["url"], headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"

    talk = Terminal(_chat(api_stack, "--model", "neverboots"), api_stack["env"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE)
    talk.process.stdin.write(b"Hello!\n")
    talk.process.stdin.flush()
    talk.wait_for("in line")
    talk.process.send_signal(signal.SIGINT)
    talk.wait_for(" cancelled)")
    talk.process.stdin.write(b"/quit\n")
    talk.process.stdin.flush()
    talk.finish()
    assert talk.process.returncode == 0, talk.text()
    assert re.search(r"\(job \S+ cancelled\)", talk.text()), talk.text()


def test_no_token_says_where_it_looked(cli_env, tmp_path):
    done = greenroom("chat", "hi", env=cli_env, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"looked for GREENROOM_TOKEN in {tmp_path / '.greenroom' / 'secrets.env'}" in done.stderr, done.stderr


def test_pool_commands_use_the_redis_password_up_saved_here(cli_env, redis_url, tmp_path):
    """Run from the folder `greenroom up` ran in, `greenroom pool status` finds Redis's
    password where `up` saved it; elsewhere it says what is missing."""
    bare = re.sub(r"//:[^@]*@", "//", redis_url)
    env = cli_env | {"GREENROOM_REDIS_URL": bare}
    refused = greenroom("pool", "status", env=env, cwd=tmp_path)
    assert refused.returncode != 0 and "asks for a password" in refused.stderr, refused.stderr
    (tmp_path / ".greenroom").mkdir()
    password = re.search(r"//:([^@]*)@", redis_url).group(1)
    (tmp_path / ".greenroom" / "secrets.env").write_text(f"GREENROOM_REDIS_PASSWORD={password}\n")
    found = greenroom("pool", "status", env=env, cwd=tmp_path)
    assert found.returncode == 0 and "chatbot" in found.stdout, found.stderr


def test_clean_removes_this_deployments_model_servers_only(cli_env, deployment, docker_engine):
    """`greenroom clean` (`make clean`): the containers labelled with this deployment go,
    another deployment's on the same host stay."""
    from conftest import IMAGE, RUN_ID

    def container(owner: str):
        labels = {"greenroom.managed": "true", "greenroom.owner": owner, "greenroom.pool": "chatbot"}
        return docker_engine.containers.create(IMAGE, ["sleep", "300"], labels=labels, network_mode="none")

    mine, other = container(deployment), container(f"{RUN_ID}-other")
    try:
        done = greenroom("clean", env=cli_env)
        assert done.returncode == 0, done.stderr
        assert f"removed 1 model server(s) of deployment '{deployment}'" in done.stdout, done.stdout
        ids = {row["Id"] for row in docker_engine.api.containers(all=True, filters={"label": "greenroom.managed=true"})}
        assert mine.id not in ids and other.id in ids
    finally:
        for c in (mine, other):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass  # removed by clean


def test_clean_removes_this_deployments_process_servers_only(cli_env, deployment, tmp_path):
    """The same for process servers (the runtime `up` falls back to without Docker)."""
    from conftest import RUN_ID
    from pool_manager.runtimes.process import ProcessRuntime
    from pool_manager.settings import reference_pool

    spec = reference_pool(runtime="process", command=["sleep", "300"])
    mine, other = (ProcessRuntime(owner, tmp_path / "state") for owner in (deployment, f"{RUN_ID}-other"))
    for runtime in (mine, other):
        runtime.create("gr-chatbot-1", "chatbot", spec, free_port(), "key")
    try:
        done = greenroom("clean", env=cli_env)
        assert done.returncode == 0, done.stderr
        assert f"removed 1 model server(s) of deployment '{deployment}'" in done.stdout, done.stdout
        assert mine.list_managed() == [] and [i.id for i in other.list_managed()] == ["gr-chatbot-1"]
    finally:
        for runtime in (mine, other):
            for instance in runtime.list_managed():
                runtime.destroy(instance.id)
