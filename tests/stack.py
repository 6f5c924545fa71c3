"""The whole stack as real processes (bench.stack.Stack: `greenroom api`, the Celery chat
and pool workers and beat) on the test session's redis-server.

Each Stack has its own Redis database (Celery's queue names are global within one) and
its own deployment id, so its containers carry their own owner label.
"""

import sys
import time
from pathlib import Path

import httpx
import redis

from bench import stack as bench_stack
from conftest import RUN_ID, wait_until

VENV_BIN = Path(sys.executable).parent
TOKENS = {"acme": "acme-token-0123456789", "globex": "globex-token-0123456789", "admin": "admin-token-0123456789",
          "initech": "initech-token-0123456789"}


_free_databases = list(range(1, 16))  # database 0 is the pool tests'; a stopped stack's is reused


class Stack(bench_stack.Stack):
    def __init__(self, redis_url: str, name: str, folder: Path, pool: dict, **settings):
        assert _free_databases, "more stacks running at once than Redis databases"
        self.database = _free_databases.pop(0)
        super().__init__(folder, pool, redis_url=f"{redis_url.rsplit('/', 1)[0]}/{self.database}",
                         deployment=f"{RUN_ID}-{name}", tokens=TOKENS, api_args=("--workers", "1", "--threads", "16"),
                         # tenants held to no limits unless a test sets them (they are tested apart);
                         # verbose logs: tests read Celery's line per task and per beat tick
                         **({"chat_concurrency": 8, "tenant_limits": bench_stack.UNLIMITED, "verbose": True}
                            | settings))

    def client(self, tenant: str = "acme", timeout: float = 60) -> httpx.Client:
        return super().client(tenant, timeout)

    def stop(self) -> None:
        """Stop, then empty the stack's database and hand it to the next stack."""
        try:
            super().stop()
            with redis.Redis.from_url(self.redis_url, socket_connect_timeout=2) as client:
                client.flushdb()
        except redis.ConnectionError:
            pass  # its Redis is gone (a test's own server): nothing to empty
        finally:
            if self.database not in _free_databases:
                _free_databases.append(self.database)


def wait_for_pool(client: httpx.Client, timeout: float = 30, **expected) -> dict:
    """Poll GET /v1/pools/chatbot until every expected count holds."""

    def matches():
        status = client.get("/v1/pools/chatbot").json()
        return status if all(status[k] == v for k, v in expected.items()) else None

    return wait_until(matches, timeout, interval=0.1, message=f"pool counts {expected}")


def chat(client: httpx.Client, text: str, session_id: str | None = None, wait: float = 30) -> dict:
    """Submit a one-message job and long-poll it to its end."""
    body = {"model": "chatbot", "messages": [{"role": "user", "content": text}]}
    if session_id:
        body["session_id"] = session_id
    submitted = client.post("/v1/jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    deadline = time.monotonic() + wait
    job = submitted.json()
    while job["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 10}).json()
    return job
