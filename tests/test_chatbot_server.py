"""The reference AI model server (images/chatbot/server.py), run as a real subprocess."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(60)

SERVER = Path(__file__).resolve().parents[1] / "images" / "chatbot" / "server.py"
CHAT = "/v1/chat/completions"
START_TIMEOUT_S = 10
FAULT_VARS = (
    "FAULT_NEVER_HEALTHY",
    "FAULT_EXIT_AFTER_REPLIES",
    "FAULT_HANG_REPLIES",
    "REPLY_DELAY_SECONDS",
    "FAULT_CRASH_AT_BOOT",
    "INSTANCE_ID",
    "API_KEY",
)


@dataclass
class Chatbot:
    proc: subprocess.Popen
    url: str
    log: Path

    def get(self, path, **kw):
        return httpx.get(self.url + path, timeout=kw.pop("timeout", 5), **kw)

    def post(self, path, **kw):
        return httpx.post(self.url + path, timeout=kw.pop("timeout", 5), **kw)

    def chat(self, *texts, model=None, timeout=5):
        """POST one user message per text; returns the decoded 200 response."""
        body = {"messages": [{"role": "user", "content": t} for t in texts]}
        if model is not None:
            body["model"] = model
        response = self.post(CHAT, json=body, timeout=timeout)
        assert response.status_code == 200, response.text
        return response.json()

    def say(self, text):
        """The assistant's reply to a single user message."""
        return self.chat(text)["choices"][0]["message"]["content"]

    def wait_healthy(self, timeout=START_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/healthz").status_code == 200:
                return
            time.sleep(0.05)
        pytest.fail(f"not healthy within {timeout}s; log:\n{self.log.read_text()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(proc, port, timeout=START_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited early with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    pytest.fail(f"port {port} did not accept connections within {timeout}s")


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
def start_chatbot(tmp_path):
    """Factory: start_chatbot(wait=True, **env) -> Chatbot. Every process is killed after."""
    procs = []

    def start(wait=True, **env):
        port = free_port()
        log = tmp_path / f"chatbot-{len(procs)}.log"
        full_env = {k: v for k, v in os.environ.items() if k not in FAULT_VARS}
        full_env.update(HOST="127.0.0.1", PORT=str(port), BOOT_SECONDS="0.5")
        full_env.update({k: str(v) for k, v in env.items()})
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, str(SERVER)], env=full_env,
                stdout=subprocess.DEVNULL, stderr=log_file,
            )
        procs.append(proc)
        if wait:
            wait_for_port(proc, port)
        return Chatbot(proc, f"http://127.0.0.1:{port}", log)

    yield start
    for proc in procs:
        stop(proc)


@pytest.fixture
def chatbot(start_chatbot):
    """A booted chatbot with default settings."""
    bot = start_chatbot(INSTANCE_ID="bot-a")
    bot.wait_healthy()
    return bot


# --- health and boot -------------------------------------------------------------------


def test_with_an_api_key_chat_needs_it_and_health_does_not(start_chatbot):
    bot = start_chatbot(API_KEY="the-key-0123456789")
    bot.wait_healthy()  # /healthz stays open: greenroom probes it without the key
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "the-key-0123456789"}):
        refused = bot.post(CHAT, json=body, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert bot.post(CHAT, json=body, headers={"Authorization": "Bearer the-key-0123456789"}).status_code == 200


def test_health_is_503_while_booting_then_200(start_chatbot):
    bot = start_chatbot(BOOT_SECONDS="1.5")
    booting = bot.get("/healthz")
    assert booting.status_code == 503
    assert booting.json() == {"status": "booting"}
    bot.wait_healthy()
    ok = bot.get("/healthz")
    assert ok.json() == {"status": "ok"}
    assert ok.headers["content-type"] == "application/json"


def test_chat_while_booting_is_a_503_json_error(start_chatbot):
    bot = start_chatbot(BOOT_SECONDS="30")
    response = bot.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "booting"


# --- chat ----------------------------------------------------------------------------


def test_chat_reply_is_openai_shaped(chatbot):
    body = chatbot.chat("Hello there")
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "chatbot"
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": 'Turn 1: you said "Hello there".'}
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["greenroom_container"] == {"instance": "bot-a", "turn": 1}


def test_chat_echoes_the_requested_model(chatbot):
    assert chatbot.chat("hi", model="my-pool")["model"] == "my-pool"


def test_instance_defaults_to_the_hostname(start_chatbot):
    bot = start_chatbot()
    bot.wait_healthy()
    assert bot.chat("hi")["greenroom_container"]["instance"] == socket.gethostname()


def test_remembers_the_name_and_counts_turns(chatbot):
    assert chatbot.say("What is my name?") == "I don't know your name yet."
    assert "Ada" in chatbot.say("Hi! My name is Ada.")
    assert chatbot.say("what's my name") == "Your name is Ada."
    # Memory is the process's, not the request's: the history sent is irrelevant.
    body = chatbot.chat("my name is Bob", "Do you know my name?")
    assert body["choices"][0]["message"]["content"] == "Your name is Ada."
    assert body["greenroom_container"]["turn"] == 4
    assert chatbot.say("and now?") == 'Turn 5: you said "and now?".'


def test_two_processes_have_separate_memory(start_chatbot):
    ada, bob = start_chatbot(INSTANCE_ID="a"), start_chatbot(INSTANCE_ID="b")
    ada.wait_healthy()
    bob.wait_healthy()
    ada.say("my name is Ada")
    ada.say("still there?")
    bob.say("MY NAME IS bob!")
    assert ada.chat("what is my name")["greenroom_container"] == {"instance": "a", "turn": 3}
    assert ada.say("what is my name") == "Your name is Ada."
    assert bob.say("what is my name") == "Your name is bob."


# --- bad requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json", "invalid_json"),
        (b"{\"messages\": [", "invalid_json"),
        (b"[]", "invalid_request"),
        ({}, "invalid_request"),
        ({"messages": []}, "invalid_request"),
        ({"messages": "hello"}, "invalid_request"),
        ({"messages": ["hello"]}, "invalid_request"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "invalid_request"),
        ({"messages": [{"content": "hi"}]}, "invalid_request"),
        ({"messages": [{"role": ["user"], "content": "hi"}]}, "invalid_request"),
        ({"messages": [{"role": "user", "content": None}]}, "invalid_request"),
        ({"messages": [{"role": "user", "content": ["hi"]}]}, "invalid_request"),
        ({"model": 7, "messages": [{"role": "user", "content": "hi"}]}, "invalid_request"),
    ],
    ids=lambda value: json.dumps(value) if isinstance(value, dict) else None,
)
def test_bad_chat_request_is_a_400(chatbot, payload, code):
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = chatbot.post(CHAT, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("POST", "/v1/completions", 404),
        ("GET", CHAT, 405),
        ("POST", "/healthz", 405),
        ("DELETE", CHAT, 405),
    ],
)
def test_wrong_path_or_method(chatbot, method, path, status):
    response = httpx.request(method, chatbot.url + path, timeout=5)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"code", "message"}


def test_body_over_one_mib_is_a_413(chatbot):
    response = chatbot.post(CHAT, content=b" " * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_bad_request_does_not_count_as_a_turn(chatbot):
    chatbot.post(CHAT, json={"messages": []})
    assert chatbot.chat("hi")["greenroom_container"]["turn"] == 1


# --- fault switches and signals ------------------------------------------------------


def test_never_healthy(start_chatbot):
    bot = start_chatbot(FAULT_NEVER_HEALTHY="1")
    deadline = time.monotonic() + 1.5  # three times BOOT_SECONDS
    while time.monotonic() < deadline:
        assert bot.get("/healthz").status_code == 503
        time.sleep(0.1)
    response = bot.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 503


def test_exit_after_replies(start_chatbot):
    bot = start_chatbot(FAULT_EXIT_AFTER_REPLIES="1")
    bot.wait_healthy()
    assert bot.chat("hi")["greenroom_container"]["turn"] == 1
    assert bot.proc.wait(timeout=10) == 1


def test_hang_replies_never_answer(start_chatbot):
    bot = start_chatbot(FAULT_HANG_REPLIES="1")
    bot.wait_healthy()
    with pytest.raises(httpx.ReadTimeout):
        bot.chat("hi", timeout=1)
    assert bot.get("/healthz").status_code == 200  # other requests are still served


def test_reply_delay(start_chatbot):
    bot = start_chatbot(REPLY_DELAY_SECONDS="0.8")
    bot.wait_healthy()
    started = time.monotonic()
    bot.chat("hi")
    assert time.monotonic() - started >= 0.8


def test_crash_at_boot_exits_with_code_3(start_chatbot):
    bot = start_chatbot(wait=False, FAULT_CRASH_AT_BOOT="1")
    assert bot.proc.wait(timeout=10) == 3


def test_sigterm_exits_zero_even_with_a_hung_request(start_chatbot):
    bot = start_chatbot(FAULT_HANG_REPLIES="1")
    bot.wait_healthy()
    with pytest.raises(httpx.ReadTimeout):
        bot.chat("hi", timeout=0.5)
    bot.proc.send_signal(signal.SIGTERM)
    assert bot.proc.wait(timeout=5) == 0


def test_logs_at_most_one_line_per_request(chatbot):
    before = len(chatbot.log.read_text().splitlines())
    for _ in range(3):
        chatbot.say("hi")
    chatbot.get("/nope")
    assert len(chatbot.log.read_text().splitlines()) - before <= 4


# --- streaming -------------------------------------------------------------------------


def sse_data(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n") if line.startswith("data: ")]


def test_a_streamed_reply_is_openai_chunks_then_done(chatbot):
    response = chatbot.post(CHAT, json={"messages": [{"role": "user", "content": "my name is Ada"}], "stream": True,
                                        "stream_options": {"include_usage": True}})
    assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
    *chunks, done = sse_data(response.text)
    assert done == "[DONE]"
    chunks = [json.loads(chunk) for chunk in chunks]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Turn 1: nice to meet you, Ada."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(text.split())


def test_streamed_chunks_are_paced_and_faults_strike_mid_stream(start_chatbot):
    paced = start_chatbot(STREAM_CHUNK_SECONDS="0.2")
    paced.wait_healthy()
    body = {"messages": [{"role": "user", "content": "hello"}], "stream": True}
    began = time.monotonic()
    with httpx.stream("POST", paced.url + CHAT, json=body, timeout=10) as response:
        arrivals = [time.monotonic() - began for line in response.iter_lines() if line.startswith("data: ")]
    assert arrivals[-1] - arrivals[0] >= 0.2 * (len(arrivals) - 2)  # they came as sent, not all at the end
    exiting = start_chatbot(FAULT_EXIT_AFTER_CHUNKS="2")
    exiting.wait_healthy()
    with pytest.raises(httpx.RemoteProtocolError), \
            httpx.stream("POST", exiting.url + CHAT, json=body, timeout=10) as response:
        list(response.iter_lines())  # cut short: the chunked body never ends
    assert exiting.proc.wait(5) == 1
    hanging = start_chatbot(FAULT_HANG_AFTER_CHUNKS="1")
    hanging.wait_healthy()
    with pytest.raises(httpx.ReadTimeout), httpx.stream("POST", hanging.url + CHAT, json=body, timeout=2) as response:
        list(response.iter_lines())
