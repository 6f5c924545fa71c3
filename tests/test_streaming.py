"""Streaming, end to end: the model's chunks through the worker, the job's log and the
API to an OpenAI client; a job's life as events, resumable; and what a stream does when
its client, its container or its worker goes away. Real Redis, Celery and model servers
(the process runtime: these tests are about the stream, not the container)."""

import json
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from faultkit import poll_until_final, submit
from stack import TOKENS, Stack, wait_for_pool

pytestmark = pytest.mark.timeout(180)
SERVER = ["python3", "images/chatbot/server.py"]


def pool(**env) -> dict:
    return {"command": SERVER, "runtime": "process", "target_idle": 1, "max_total": 4,
            "env": {"BOOT_SECONDS": "0.5", "STREAM_CHUNK_SECONDS": "0.05"} | env}


@pytest.fixture(scope="module")
def stack(redis_url, tmp_path_factory, request):
    running = Stack(redis_url, "streaming", tmp_path_factory.mktemp("streaming"), pool())
    running.start("pool", "chat", "api")
    yield running
    running.stop()
    if request.session.testsfailed:
        print(running.logs())


def events_of(source: httpx.Response | Iterator[str]) -> list[dict]:
    """SSE events as {id, event, data} (data decoded), comments as {comment}: of a whole
    response, or of the rest of its lines."""
    found, current = [], {}
    for line in source.iter_lines() if isinstance(source, httpx.Response) else source:
        if line.startswith(":"):
            found.append({"comment": line[1:].strip()})
        elif line.startswith(("id:", "event:", "data:")):
            name, _, value = line.partition(":")
            current[name] = value.strip()
        elif not line and current:
            data = current.get("data", "")
            current["data"] = data if data == "[DONE]" else json.loads(data)
            found.append(current)
            current = {}
    return found


def test_the_openai_client_streams_unchanged_and_the_record_holds_the_whole_reply(stack):
    with stack.client() as api:
        wait_for_pool(api, idle=1)
    client = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=TOKENS["acme"], max_retries=0)
    chunks = list(client.chat.completions.create(model="chatbot", stream=True, stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "my name is Ada"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Turn 1: nice to meet you, Ada."
    assert len([c for c in chunks if c.choices]) > 5  # word by word, not one lump
    usage = next(c for c in chunks if c.usage)
    assert usage.usage.completion_tokens == len(text.split())
    meta = chunks[-1].model_extra["greenroom"]
    assert meta["warm"] is True and set(meta["timings"]) >= {"queued_s", "total_s"}
    with stack.client() as api:
        job = api.get(f"/v1/jobs/{meta['job_id']}").json()
        assert job["status"] == "succeeded"
        assert job["result"]["choices"][0]["message"]["content"] == text
        assert job["result"]["usage"]["completion_tokens"] == len(text.split())
        follow_up = client.chat.completions.create(model="chatbot", stream=True, extra_body={
            "session_id": meta["session_id"]}, messages=[{"role": "user", "content": "what is my name?"}])
        assert "".join(c.choices[0].delta.content or "" for c in follow_up if c.choices) == "Your name is Ada."
        api.delete(f"/v1/sessions/{meta['session_id']}")


def test_a_jobs_events_show_its_life_and_resume_after_a_lost_connection(stack):
    with stack.client() as api:
        job_id = submit(api, "hello there", stream=True).json()["id"]
        with api.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            seen = [e for e in events_of(response) if "event" in e]
        names = [e["event"] for e in seen]
        assert names[0] == "queued" and "running" in names and names[-1] == "succeeded"
        assert seen[-1]["data"]["result"]["choices"][0]["message"]["content"] == 'Turn 1: you said "hello there".'
        chunks = [e for e in seen if e["event"] == "chunk"]
        assert "".join(c["data"]["choices"][0]["delta"].get("content", "") for c in chunks if c["data"]["choices"]) \
            == 'Turn 1: you said "hello there".'
        resumed_at = seen[3]["id"]
        with api.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": resumed_at}) as response:
            rest = [e for e in events_of(response) if "event" in e]
        assert [e["id"] for e in rest] == [e["id"] for e in seen[4:]]  # the rest, once each
        with stack.client("globex") as other:
            assert other.get(f"/v1/jobs/{job_id}/events").status_code == 404
        api.delete(f"/v1/sessions/{job_id}")


def test_a_client_that_leaves_mid_stream_does_not_stop_the_job(stack):
    with stack.client() as api:
        body = {"model": "chatbot", "stream": True, "messages": [{"role": "user", "content": "tell me a story"}]}
        with api.stream("POST", "/v1/chat/completions", json=body) as response:
            session = response.headers["X-Greenroom-Session"]
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    break  # one chunk, then gone
        job = poll_until_final(api, session, timeout=30)  # a new session is named after its first job
        assert job["status"] == "succeeded"
        assert job["result"]["choices"][0]["message"]["content"] == 'Turn 1: you said "tell me a story".'
        api.delete(f"/v1/sessions/{session}")


@pytest.mark.parametrize("env, code", [({"FAULT_EXIT_AFTER_CHUNKS": "3"}, "container_lost"),
                                       ({"FAULT_HANG_AFTER_CHUNKS": "3"}, "container_timeout")],
                         ids=["dies", "hangs"])
def test_a_container_that_fails_mid_stream_ends_it_with_an_error_and_breaks_the_session(
        redis_url, tmp_path_factory, env, code):
    with Stack(redis_url, f"stream-{code}", tmp_path_factory.mktemp(code), pool(**env), chat_timeout_s=3) as failing:
        with failing.client(timeout=30) as api:
            body = {"model": "chatbot", "stream": True, "messages": [{"role": "user", "content": "one two three"}]}
            with api.stream("POST", "/v1/chat/completions", json=body) as response:
                seen = events_of(response)
            data = [e["data"] for e in seen if "data" in e]
            assert any("choices" in d for d in data)  # it had begun
            assert data[-1]["error"]["code"] == code, data[-1]
            assert "[DONE]" not in data
            session = response.headers["X-Greenroom-Session"]
            assert api.get(f"/v1/sessions/{session}").json()["state"] == "broken"


def test_a_worker_killed_mid_stream_ends_the_stream_clearly_and_the_job_still_completes(redis_url, tmp_path_factory):
    """The lease hands the job to another worker, which streams the reply again: the stream
    a client holds ends with worker_lost (it cannot be taken back), the job succeeds once."""
    with Stack(redis_url, "stream-worker", tmp_path_factory.mktemp("stream-worker"),
               pool(STREAM_CHUNK_SECONDS="1")) as running:
        with running.client(timeout=60) as api:
            job_id = submit(api, "one two three four five six seven", stream=True).json()["id"]
            with api.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                lines = response.iter_lines()
                for line in lines:
                    if line.startswith("event: chunk"):
                        break
                running.kill("chat", signal.SIGKILL)
                running.start_one("chat")
                rest = events_of(lines)
            assert "restart" in [e.get("event") for e in rest]
            assert rest[-1]["event"] == "succeeded"
            job = api.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "succeeded"
            assert job["result"]["choices"][0]["message"]["content"].endswith("one two three four five six seven\".")
            with api.stream("POST", "/v1/chat/completions", json={"model": "chatbot", "stream": True,
                            "session_id": job_id, "messages": [{"role": "user", "content": "again"}]}) as chat:
                assert events_of(chat)[-1]["data"] == "[DONE]"


def test_waiting_for_a_container_shows_in_the_stream(redis_url, tmp_path_factory):
    slow = {"command": SERVER, "runtime": "process", "target_idle": 0, "max_total": 1,
            "env": {"BOOT_SECONDS": "4"}}
    with Stack(redis_url, "stream-wait", tmp_path_factory.mktemp("stream-wait"), slow) as running:
        with running.client(timeout=60) as api:
            body = {"model": "chatbot", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            began = time.monotonic()
            with api.stream("POST", "/v1/chat/completions", json=body) as response:
                seen = events_of(response)
            comments = [e["comment"] for e in seen if "comment" in e]
            assert "waiting_for_container position=1" in comments
            assert seen[-1]["data"] == "[DONE]"
            assert time.monotonic() - began > 3  # it waited for a boot, and said so meanwhile
