"""Many open long polls against one API process (gunicorn's gevent worker, as `greenroom
api` runs it): the requests beside them are still answered, each tenant and the process
hold only so many, and a client that never finishes sending its request is dropped.
An API-only stack: no workers, so every polled job stays queued and every poll is held.
Shortened for the test: the read timeout (api_read_timeout_s, 30 s by default) is 2 s."""

import json
import re
import socket
import time

import httpx
import pytest

from bench.scenarios.connections import answered
from conftest import wait_until
from stack import TOKENS, Stack

pytestmark = pytest.mark.timeout(120)
PER_TENANT = 60
READ_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def stack(redis_url, tmp_path_factory):
    pool = {"command": ["python3", "images/chatbot/server.py"], "runtime": "process", "target_idle": 0}
    running = Stack(redis_url, "open-requests", tmp_path_factory.mktemp("open"), pool,
                    max_open_waits_per_tenant=PER_TENANT, max_open_waits=300, api_read_timeout_s=READ_TIMEOUT_S)
    running.start("api")
    yield running
    running.stop()


def queued_job(stack, tenant: str) -> str:
    with stack.client(tenant) as client:
        return client.post("/v1/jobs", json={"model": "chatbot", "messages": [{"role": "user", "content": "x"}]}
                           ).json()["id"]


def open_polls(stack, tenant: str, job_id: str, count: int, wait: float = 60) -> list[socket.socket]:
    host, port = stack.api_url.removeprefix("http://").split(":")
    request = (f"GET /v1/jobs/{job_id}?wait={wait} HTTP/1.1\r\nHost: {host}\r\n"
               f"Authorization: Bearer {TOKENS[tenant]}\r\n\r\n").encode()
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(request)
        sockets.append(sock)
    return sockets


def test_health_and_submissions_are_answered_while_a_hundred_polls_are_held(stack):
    """100 open polls: more than the 64 threads (2 x 32) the API had before, and than the
    16 this test stack would have with gthread; each held a thread there, so /healthz waited
    behind them (27 s with 80)."""
    polls = [*open_polls(stack, "initech", queued_job(stack, "initech"), 50),
             *open_polls(stack, "admin", queued_job(stack, "admin"), 50)]
    try:
        assert httpx.get(f"{stack.api_url}/healthz", timeout=5).status_code == 200
        with stack.client("admin", timeout=5) as admin:
            assert admin.post("/v1/jobs", json={"model": "chatbot", "messages": [
                {"role": "user", "content": "x"}]}).status_code == 202
        assert not any(answered(poll) for poll in polls)  # every poll still held
    finally:
        for poll in polls:
            poll.close()


def test_a_tenant_holds_only_so_many_polls_then_gets_429(stack):
    """One poll more than the cap: whichever the server reads last is refused at once, the
    rest are held. A poll counts while it is held; one whose client goes away stops
    counting at once."""
    job_id = queued_job(stack, "acme")
    polls = open_polls(stack, "acme", job_id, PER_TENANT + 1)
    try:
        wait_until(lambda: any(answered(poll) for poll in polls), 30, message="a poll over the cap answered")
        [refused] = [poll for poll in polls if answered(poll)]
        head, _, body = response_of(refused).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 429 ") and b"\r\nRetry-After: 1\r\n" in head + b"\r\n", head
        assert json.loads(body)["error"]["code"] == "too_many_waits"
        with stack.client("acme", timeout=10) as acme:
            assert acme.get(f"/v1/jobs/{job_id}", params={"wait": 0.1}).status_code == 429  # still full
            with stack.client("globex", timeout=10) as globex:  # another tenant's polls are its own
                assert globex.get(f"/v1/jobs/{queued_job(stack, 'globex')}", params={"wait": 0.5}).status_code == 200
            for poll in polls:  # the clients go away ...
                poll.close()
            wait_until(lambda: acme.get(f"/v1/jobs/{job_id}", params={"wait": 0.1}).status_code == 200, 10,
                       message="room again")  # ... and their polls end (their waits had 60 s to go)
    finally:
        for poll in polls:
            poll.close()


def response_of(sock: socket.socket) -> bytes:
    """A whole response (head and Content-Length body) from a socket that has one waiting."""
    sock.setblocking(True)
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _content_length(data: bytes) -> int:
    found = re.search(rb"\r\nContent-Length: (\d+)", data.partition(b"\r\n\r\n")[0], re.I)
    return int(found.group(1)) if found else 0


def test_a_client_that_never_finishes_its_request_is_dropped(stack):
    host, port = stack.api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as half_sent:
        half_sent.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert half_sent.recv(1024) == b""  # closed by the server (keep-alive, 5 s), not answered


def test_a_body_sent_too_slowly_is_dropped(stack):
    host, port = stack.api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as slow:
        slow.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['acme']}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())  # 1 byte of 100
        began = time.monotonic()
        answer = response_of(slow)
        assert time.monotonic() - began < READ_TIMEOUT_S + 5
        assert answer.startswith(b"HTTP/1.1 408 ") and b'"code":"request_timeout"' in answer
        assert slow.recv(1024) == b""  # and then hangs up: the rest of the body never comes


def test_a_long_poll_is_held_its_whole_wait_past_the_read_timeout(stack):
    """The read timeout bounds a client's sending, not how long it may wait for an answer."""
    [poll] = open_polls(stack, "acme", queued_job(stack, "acme"), 1, wait=3 * READ_TIMEOUT_S)
    with poll:
        poll.settimeout(30)
        began = time.monotonic()
        assert poll.recv(15) == b"HTTP/1.1 200 OK"
        assert time.monotonic() - began > 3 * READ_TIMEOUT_S - 0.5


def test_two_hundred_open_event_streams_leave_the_api_answering(stack):
    """200 SSE streams (GET /v1/jobs/<id>/events of queued jobs) held open at once."""
    host, port = stack.api_url.removeprefix("http://").split(":")
    streams = []
    for n in range(200):
        tenant = ("acme", "globex", "initech", "admin")[n % 4]
        request = (f"GET /v1/jobs/{queued_job(stack, tenant)}/events HTTP/1.1\r\nHost: {host}\r\n"
                   f"Authorization: Bearer {TOKENS[tenant]}\r\n\r\n").encode()
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(request)
        streams.append(sock)
    try:
        first = [sock.recv(4096) for sock in streams]  # each has begun: headers, retry, queued
        assert all(b"200 OK" in head and b"text/event-stream" in head for head in first)
        assert httpx.get(f"{stack.api_url}/healthz", timeout=5).status_code == 200
        with stack.client("admin", timeout=5) as admin:
            assert admin.post("/v1/jobs", json={"model": "chatbot", "messages": [
                {"role": "user", "content": "x"}]}).status_code == 202
    finally:
        for sock in streams:
            sock.close()
