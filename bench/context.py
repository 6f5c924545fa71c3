"""What every scenario gets: its parameters (quick or full), stacks to run against,
progress bars, and where its plots go."""

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pool_manager.settings import PoolSpec, load_settings
from workers.config import make_celery
from workers.names import CHAT_QUEUE, PING_TASK, POOL_QUEUE, RECONCILE_TASK

from .client import wait_until_settled
from .stack import IMAGE, UNLIMITED, Stack

# Every bench stack relays with enough threads that a burst of 20 never queues behind them,
# and its one tenant is held to no limits (they are measured in the tenants scenario).
STACK_SETTINGS = {"chat_concurrency": 32, "reconcile_interval_s": 5, "tenant_limits": UNLIMITED}


def pool_spec(boot_seconds: float, target_idle: int, max_total: int, **extra) -> dict:
    """The reference model as a Docker pool, booting for boot_seconds."""
    return {"image": IMAGE, "runtime": "docker", "target_idle": target_idle, "max_total": max_total,
            "env": {"BOOT_SECONDS": str(boot_seconds)}, **extra}


@dataclass
class Context:
    workdir: Path  # the stacks' folders (configs, logs)
    report_dir: Path  # plots go here
    name: str  # of this run: plots are <name>-<plot>.png
    quick: bool

    def params(self, table: dict) -> dict:
        return dict(table["quick" if self.quick else "full"])

    def stack(self, label: str, spec: dict, **settings) -> Stack:
        """A fresh private stack (not started: use it in a `with`)."""
        folder = self.workdir / f"{label}-{time.monotonic_ns() % 10**9}"
        return Stack(folder, spec, **(STACK_SETTINGS | settings))

    def progress(self, total: int | None, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)

    def plot_path(self, plot: str) -> Path:
        return self.report_dir / f"{self.name}-{plot}.png"


def harness_settings(stack: Stack, spec: dict):
    """Settings for greenroom code run inside the harness against this stack."""
    return load_settings(deployment=stack.deployment, redis_url=stack.redis_url,
                         pools={"chatbot": PoolSpec(**spec)})


def celery_app(stack: Stack, spec: dict):
    return make_celery(harness_settings(stack, spec))


def ready(stack: Stack, spec: dict, timeout: float = 120) -> None:
    """Both workers answer (a ping on the chat queue, a reconcile on the pool queue) and the
    pool holds its target_idle idle containers."""
    app = celery_app(stack, spec)
    try:
        app.send_task(PING_TASK, queue=CHAT_QUEUE).get(timeout=60)
        app.send_task(RECONCILE_TASK, args=["chatbot"], queue=POOL_QUEUE).get(timeout=60)
    finally:
        app.close()
    with stack.client() as client:
        wait_until_settled(client, spec["target_idle"], timeout)


def clean(value):
    """JSON-safe: NaN and infinities become None, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value
