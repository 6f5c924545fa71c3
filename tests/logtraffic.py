"""`greenroom up` as a user runs it (its own Redis, its own ports and folder), and a
scripted window of traffic against it, for counting the log lines an operator reads.

Used by tests/test_logs.py (short windows) and by hand, for the figures of a whole minute:

    .venv/bin/python tests/logtraffic.py --runtime docker --quiet 60 --busy 60

The busy window: every few seconds a new session with two messages, then closed; and once
each, a streamed reply, a job cancelled while it waits, a send_task job for an unknown model
(a client's mistake) and a container that dies mid-session (a failure on our side).
"""

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stack import free_port, pool_toml, remove_model_servers, wait_until  # noqa: E402

GREENROOM = str(Path(sys.executable).parent / "greenroom")
SERVER = str(Path(__file__).resolve().parents[1] / "images" / "chatbot" / "server.py")


def pools(runtime: str) -> dict[str, dict]:
    """chatbot as configured (docker: the reference image); slowbot never finishes booting in
    time (its jobs wait); flaky exits after its first reply (the next message loses it)."""
    process = {"runtime": "process", "command": [sys.executable, SERVER]}
    chatbot = ({"runtime": "docker", "image": "greenroom/chatbot:latest"} if runtime == "docker" else process) | {
        "target_idle": 2, "max_total": 6, "env": {"BOOT_SECONDS": "1", "STREAM_CHUNK_SECONDS": "0.05"}}
    return {"chatbot": chatbot,
            "slowbot": process | {"target_idle": 0, "max_total": 1, "boot_timeout_s": 900,
                                  "env": {"BOOT_SECONDS": "600"}},
            "flaky": process | {"target_idle": 0, "max_total": 2, "env": {"BOOT_SECONDS": "0.2",
                                                                         "FAULT_EXIT_AFTER_REPLIES": "1"}}}


class UpStack:
    """`greenroom up` in folder, its output in folder/up.log."""

    def __init__(self, folder: Path, runtime: str = "process", verbose: bool = False):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.deployment = f"logs-{secrets.token_hex(3)}"
        self.api_url = f"http://127.0.0.1:{free_port()}"
        self.redis_port = free_port()
        config = folder / "greenroom.toml"
        config.write_text(pool_toml(pools(runtime)))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENROOM_", "FLOWER_"))} | {
            "GREENROOM_CONFIG": str(config), "GREENROOM_DEPLOYMENT": self.deployment,
            "GREENROOM_API_PORT": self.api_url.rsplit(":", 1)[1], "GREENROOM_FLOWER_PORT": str(free_port()),
            "GREENROOM_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0"}
        self.log = folder / "up.log"
        self.argv = [GREENROOM, "up", *(["--verbose"] if verbose else [])]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "UpStack":
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.folder, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        try:
            wait_until(self._ready, 90, interval=0.5, message="greenroom up: the API and 2 idle chatbots")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def secret(self, name: str) -> str:
        text = (self.folder / ".greenroom" / "secrets.env").read_text()
        return re.search(rf"^{name}=(\S+)$", text, re.M).group(1).strip("'")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=60,
                            headers={"Authorization": f"Bearer {self.secret('GREENROOM_TOKEN')}"})

    def redis_url(self) -> str:
        return f"redis://:{self.secret('GREENROOM_REDIS_PASSWORD')}@127.0.0.1:{self.redis_port}/0"

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"greenroom up exited:\n{self.text()[-4000:]}")
        try:
            with self.client() as client:
                return client.get("/v1/pools/chatbot").json().get("idle", 0) >= 2
        except (httpx.HTTPError, ValueError, AttributeError, FileNotFoundError):
            return False

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        remove_model_servers(self.deployment, str(self.folder / ".greenroom" / "state"))


def chat(client: httpx.Client, text: str, session_id: str | None = None, model: str = "chatbot",
         stream: bool = False) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
    job = client.post("/v1/jobs", json=body | ({"session_id": session_id} if session_id else {})).json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
    return job


def busy(stack: UpStack, seconds: float, every_s: float = 3.0) -> dict[str, int]:
    """The busy window's traffic; returns what it did."""
    from celery import Celery

    done = {"sessions": 0, "cancelled": 0, "send_task_refused": 0, "lost": 0, "streamed": 0}
    end = time.monotonic() + seconds
    with stack.client() as client:
        waiting = client.post("/v1/jobs", json={"model": "slowbot", "messages": [{"role": "user", "content": "hi"}]})
        wait_until(lambda: client.get(f"/v1/jobs/{waiting.json()['id']}").json()["status"] == "waiting_for_container",
                   30, message="a slowbot job waiting")
        done["cancelled"] += client.delete(f"/v1/jobs/{waiting.json()['id']}").status_code == 200
        app = Celery(broker=stack.redis_url(), backend=stack.redis_url())
        refused = app.send_task("greenroom.chat", queue="greenroom.chat",
                                kwargs={"model": "nosuch", "messages": [{"role": "user", "content": "hi"}]})
        try:
            refused.get(timeout=30)
        except Exception:
            done["send_task_refused"] += 1
        first = chat(client, "Hello!", model="flaky")
        done["lost"] += chat(client, "Still there?", first["session_id"], model="flaky")["status"] == "failed"
        done["streamed"] += chat(client, "Hello!", stream=True)["status"] == "succeeded"
        while time.monotonic() < end:
            began = time.monotonic()
            job = chat(client, "Hello! My name is Ada.")
            chat(client, "What is my name?", job["session_id"])
            client.delete(f"/v1/sessions/{job['session_id']}")
            done["sessions"] += 1
            time.sleep(max(0.0, min(every_s - (time.monotonic() - began), end - time.monotonic())))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=["docker", "process"], default="docker")
    parser.add_argument("--quiet", type=float, default=60)
    parser.add_argument("--busy", type=float, default=60)
    parser.add_argument("--folder", type=Path, default=Path("/tmp") / f"greenroom-logs-{secrets.token_hex(3)}")
    parser.add_argument("--verbose", action="store_true", help="greenroom up --verbose")
    args = parser.parse_args()
    with UpStack(args.folder, args.runtime, args.verbose) as stack:
        started = len(stack.lines())
        time.sleep(args.quiet)
        quiet_end = len(stack.lines())
        did = busy(stack, args.busy)
        busy_end = len(stack.lines())
    lines = stack.lines()
    print(json.dumps({"start-up": started, "quiet": quiet_end - started, "busy": busy_end - quiet_end,
                      "traffic": did, "log": str(stack.log)}))
    for name, part in (("quiet", lines[started:quiet_end]), ("busy", lines[quiet_end:busy_end])):
        by_program = {}
        for line in part:
            program = line[9:21].strip() if len(line) > 21 else "?"
            by_program[program] = by_program.get(program, 0) + 1
        print(name, by_program)


if __name__ == "__main__":
    main()
