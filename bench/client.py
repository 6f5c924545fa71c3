"""What the scenarios do over HTTP and Redis: chats through greenroom and straight to a
container, sessions, pool counts, and the container records greenroom keeps in Redis."""

import threading
import time

import httpx
import redis

from pool_manager.keys import Keys
from pool_manager.schemas import FINAL

from .stack import Stack, wait_until

MODEL = "chatbot"
MESSAGES = [{"role": "user", "content": "hello there"}]


class ChatFailed(RuntimeError):
    """A chat the benchmark sent did not succeed."""


def new_session(client: httpx.Client, poll_s: float = 120) -> dict:
    """POST /v1/chat/completions without a session: a new session; the reply (with its
    greenroom block). A 202 (still waiting past chat_wait_s) is long-polled to its end."""
    response = client.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})
    if response.status_code == 202:
        return _finish(client, response.json()["id"], poll_s)
    return _reply(response)


def chat_in_session(client: httpx.Client, session_id: str) -> dict:
    """POST /v1/chat/completions in an existing session."""
    body = {"model": MODEL, "messages": MESSAGES, "session_id": session_id}
    return _reply(client.post("/v1/chat/completions", json=body))


def job_in_session(client: httpx.Client, session_id: str) -> dict:
    """POST /v1/jobs in an existing session, then GET ?wait=30 until it ends."""
    submitted = client.post("/v1/jobs", json={"model": MODEL, "messages": MESSAGES, "session_id": session_id})
    if submitted.status_code != 202:
        raise ChatFailed(f"POST /v1/jobs answered {submitted.status_code}: {submitted.text[:300]}")
    return _finish(client, submitted.json()["id"], 60)


def _finish(client: httpx.Client, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        if job["status"] in FINAL:
            if job["status"] != "succeeded":
                raise ChatFailed(f"job {job_id} ended {job['status']}: {job.get('error')}")
            return job["result"]
    raise ChatFailed(f"job {job_id} did not end within {timeout}s")


def _reply(response: httpx.Response) -> dict:
    if response.status_code != 200:
        raise ChatFailed(f"{response.request.url.path} answered {response.status_code}: {response.text[:300]}")
    return response.json()


def direct_chat(client: httpx.Client, endpoint: str, key: str) -> dict:
    """The same chat, straight to a container's OpenAI endpoint, with its bearer key."""
    return _reply(client.post(f"{endpoint}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES},
                              headers={"Authorization": f"Bearer {key}"}))


def close_session(client: httpx.Client, session_id: str) -> None:
    response = client.delete(f"/v1/sessions/{session_id}")
    if response.status_code not in (200, 202):
        raise ChatFailed(f"DELETE session answered {response.status_code}: {response.text[:300]}")


def pool_status(client: httpx.Client) -> dict:
    return _reply(client.get(f"/v1/pools/{MODEL}"))


def wait_until_settled(client: httpx.Client, target_idle: int, timeout: float, sessions_open: bool = False) -> dict:
    """At least target_idle idle, nothing warming (nor assigned, unless sessions_open):
    the pool at rest."""

    def settled():
        status = pool_status(client)
        at_rest = status["idle"] >= target_idle and not status["warming"]
        return status if at_rest and (sessions_open or not status["assigned"]) else None

    return wait_until(settled, timeout, interval=0.1, message=f"the pool to settle at {target_idle} idle")


def scale(client: httpx.Client, **values: int) -> dict:
    response = client.patch(f"/v1/pools/{MODEL}", json=values)
    if response.status_code != 200:
        raise ChatFailed(f"PATCH pool answered {response.status_code}: {response.text[:300]}")
    return response.json()


class Records:
    """The container hashes greenroom keeps in Redis (keys.py): created_at (just before
    the runtime's create call), idle_at, assigned_at, state..."""

    def __init__(self, stack: Stack):
        self.redis = redis.Redis.from_url(stack.redis_url, decode_responses=True)
        self.prefix = Keys(stack.deployment).container("")

    def container(self, container_id: str) -> dict:
        return _floats(self.redis.hgetall(self.prefix + container_id))

    def all(self) -> dict[str, dict]:
        keys = list(self.redis.scan_iter(match=self.prefix + "*", count=1000))
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            rows = pipe.execute()
        return {key.removeprefix(self.prefix): _floats(row) for key, row in zip(keys, rows) if row}

    def close(self) -> None:
        self.redis.close()


def _floats(fields: dict[str, str]) -> dict:
    return {k: float(v) if k.endswith("_at") else v for k, v in fields.items()}


class RecordLog:
    """Every container record seen while it ran: snapshots of Records.all() merged, so
    records deleted when their container goes are kept (call snap() often)."""

    def __init__(self, records: Records):
        self.records = records
        self.seen: dict[str, dict] = {}
        self._lock = threading.Lock()

    def snap(self) -> None:
        current = self.records.all()
        with self._lock:
            for container_id, fields in current.items():
                self.seen.setdefault(container_id, {}).update(fields)

    def rows(self) -> list[dict]:
        with self._lock:
            return [{"id": k} | v for k, v in self.seen.items()]


class Sampler:
    """GET /v1/pools every interval in a thread, recording (t, idle, warming, assigned),
    t relative to `origin` (time.time()); also snapshots container records if given."""

    def __init__(self, stack: Stack, origin: float, interval: float = 0.25, record_log: RecordLog | None = None):
        self.stack, self.origin, self.interval = stack, origin, interval
        self.record_log = record_log
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pool-sampler", daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with self.stack.client(timeout=5) as client:
            while not self._stop.wait(self.interval):
                self._sample(client)

    def _sample(self, client: httpx.Client) -> None:
        try:
            status = pool_status(client)
            if self.record_log:
                self.record_log.snap()
        except (httpx.HTTPError, redis.RedisError):
            return  # a missed sample, not a failed run
        self.samples.append({"t": time.time() - self.origin,
                             **{k: status[k] for k in ("idle", "warming", "assigned")}})
