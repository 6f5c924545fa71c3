"""Waiting: what jobs cost while they wait for a container, and how fast a container that
turns idle reaches the head of the line.

1. Cost of waiting. A pool of one container held by an open session (max_total 1), so
   every new session waits: with 0, 10, 100 and 500 jobs waiting, the stack's Redis
   commands per second (INFO's total_commands_processed over a window), the chat
   worker's tasks executing (Celery's inspect().active(): threads held), and follow-up
   latency in the open session (client request to reply).
2. Idle to running. Jobs wait while the pool boots containers for them (target_idle 0);
   for each job, the time from its container's idle_at (container record) to its
   `running` entry in the job's log (a Redis Stream id: milliseconds).
"""

import threading
import time

import redis

from pool_manager.keys import Keys

from ..client import Records, chat_in_session, close_session, new_session, scale, wait_until_settled
from ..context import Context, celery_app, pool_spec, ready
from ..markdown import SUMMARY_HEADERS, ms, s, summary_row, table
from ..plots import figure, save
from ..stats import summary
from ..stack import wait_until

PARAMS = {
    "quick": {"boot_seconds": 1, "waiting": [0, 20], "window_s": 2, "follow_ups": 5,
              "handoff_jobs": 4, "handoff_rounds": 1},
    "full": {"boot_seconds": 2, "waiting": [0, 10, 100, 500], "window_s": 10, "follow_ups": 40,
             "handoff_jobs": 10, "handoff_rounds": 5},
}
MESSAGES = [{"role": "user", "content": "waiting"}]


def run(ctx: Context) -> dict:
    p = ctx.params(PARAMS)
    # Long waits: no job reaches its deadline (claim_timeout_s 900, not 300) and the held
    # session is never closed to make room for them (session_min_idle_s 3600, not 30).
    spec = pool_spec(p["boot_seconds"], target_idle=1, max_total=1, session_min_idle_s=3600)
    with ctx.stack("waiting", spec, claim_timeout_s=900) as stack:
        ready(stack, spec)
        cost = [one_level(stack, spec, count, p) for count in p["waiting"]]
        handoff = idle_to_running(stack, p)
    result = {"params": p, "cost": cost, "idle_to_running": summary(handoff), "idle_to_running_n": len(handoff)}
    return result | {"plots": [plot(ctx, cost, handoff)]}


def plot(ctx: Context, cost: list[dict], handoff: list[float]) -> str:
    path = ctx.plot_path("waiting")
    fig, axes = figure(1, 2, width=12, height=3.8)
    counts = [level["waiting"] for level in cost]
    axes[0].plot(counts, [level["commands_per_s"] for level in cost], marker="o", label="Redis commands/s")
    axes[0].plot(counts, [level["follow_up"]["p50"] * 1000 for level in cost], marker="s",
                 label="follow-up p50 (ms)")
    axes[0].set_xlabel("jobs waiting")
    axes[0].legend(fontsize=7)
    axes[1].plot(sorted(d * 1000 for d in handoff), marker=".", ls="")
    axes[1].set_xlabel("jobs, by delay")
    axes[1].set_ylabel("container idle -> job running (ms)")
    for ax in axes:
        ax.grid(alpha=0.3)
    save(fig, path)
    return path.name


def one_level(stack, spec: dict, count: int, p: dict) -> dict:
    """count jobs waiting behind an open session: Redis calls, threads held, follow-ups."""
    with stack.client() as client:
        held = new_session(client)["greenroom"]["session_id"]
        waiting = [submit(client) for _ in range(count)]
        wait_until(lambda: all_waiting(client, waiting), 120, interval=0.2, message=f"{count} jobs waiting")
        commands = commands_per_second(stack, p["window_s"])
        threads = executing(stack, spec)
        follow_ups = []
        for _ in range(p["follow_ups"]):
            began = time.perf_counter()
            chat_in_session(client, held)
            follow_ups.append(time.perf_counter() - began)
        still = all_waiting(client, waiting)
        for job_id in waiting:
            client.delete(f"/v1/jobs/{job_id}")
        close_session(client, held)
        wait_until_settled(client, 1, 120)
    return {"waiting": count, "commands_per_s": commands, "tasks_executing": threads,
            "follow_up": summary(follow_ups), "all_still_waiting": still}


def submit(client) -> str:
    response = client.post("/v1/jobs", json={"model": "chatbot", "messages": MESSAGES})
    response.raise_for_status()
    return response.json()["id"]


def all_waiting(client, job_ids: list[str]) -> bool:
    return all(client.get(f"/v1/jobs/{job_id}").json()["status"] == "waiting_for_container" for job_id in job_ids)


def commands_per_second(stack, window_s: float) -> float:
    with redis.Redis.from_url(stack.redis_url) as raw:
        before = raw.info("stats")["total_commands_processed"]
        time.sleep(window_s)
        return (raw.info("stats")["total_commands_processed"] - before) / window_s


def executing(stack, spec: dict) -> int:
    """Chat tasks executing on the chat worker now (each holds one of its threads)."""
    app = celery_app(stack, spec)
    try:
        active = app.control.inspect(timeout=2).active() or {}
    finally:
        app.close()
    return sum(len(tasks) for worker, tasks in active.items() if "chat" in worker)


def idle_to_running(stack, p: dict) -> list[float]:
    """Rounds of handoff_jobs new sessions at once on an empty pool: each waits for a
    container booted for it; the delay from that container's idle_at to the job running."""
    keys, records, delays = Keys(stack.deployment), Records(stack), []
    with stack.client() as client, redis.Redis.from_url(stack.redis_url, decode_responses=True) as raw:
        scale(client, target_idle=0, max_total=p["handoff_jobs"])
        wait_until_settled(client, 0, 120)
        for _ in range(p["handoff_rounds"]):
            jobs = [None] * p["handoff_jobs"]
            threads = [threading.Thread(target=lambda i=i: jobs.__setitem__(i, submit(client)))
                       for i in range(len(jobs))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wait_until(lambda: all(client.get(f"/v1/jobs/{j}").json()["status"] == "succeeded" for j in jobs),
                       120, interval=0.2, message="the round's jobs")
            for job_id in jobs:
                container = raw.hget(keys.job(job_id), "container")
                running = [entry_id for entry_id, fields in raw.xrange(keys.job_log(job_id))
                           if fields["event"] == "running"]
                idle_at = records.container(container).get("idle_at")
                if running and idle_at:
                    delays.append(int(running[0].split("-")[0]) / 1000 - idle_at)
                close_session(client, client.get(f"/v1/jobs/{job_id}").json()["session_id"])
            wait_until_settled(client, 0, 120)
    records.close()
    return delays


def markdown(result: dict) -> str:
    p = result["params"]
    rows = [[str(level["waiting"]), f"{level['commands_per_s']:.0f}",
             f"{(level['commands_per_s'] - result['cost'][0]['commands_per_s']) / level['waiting']:.2f}"
             if level["waiting"] else "-", str(level["tasks_executing"]), ms(level["follow_up"]["p50"]),
             ms(level["follow_up"]["p99"]), "yes" if level["all_still_waiting"] else "no"]
            for level in result["cost"]]
    cost = table(["jobs waiting", "Redis commands/s", "extra per waiting job/s", "chat tasks executing",
                  "follow-up p50", "follow-up p99", "all still waiting after"], rows)
    handoff = table(SUMMARY_HEADERS, [summary_row("container idle -> job running", result["idle_to_running"], s)])
    return "\n\n".join([
        f"A pool of one container held by an open session (max_total 1, claim_timeout_s 900): jobs wait "
        f"behind it; commands counted over {p['window_s']} s, {p['follow_ups']} follow-ups in the open session. "
        f"Then {p['handoff_rounds']} round(s) of {p['handoff_jobs']} new sessions at once on an empty pool "
        f"(BOOT_SECONDS={p['boot_seconds']}): from each container turning idle to its job running "
        f"({result['idle_to_running_n']} jobs).",
        cost, handoff])
