"""Scale: a pool of many idle containers on this machine. The time to fill it (target_idle
raised from 0 with PATCH /v1/pools), the reconcile pass duration and the claim latency
(PoolManager called directly in this process: reconcile('chatbot'), then claim and
close_session), and the memory of greenroom's own processes (API, workers, beat and their
children; the model containers are not theirs), before and after the fill."""

import time

from pool_manager.manager import PoolManager

from ..client import Records, Sampler, scale, wait_until_settled
from ..context import Context, harness_settings, pool_spec, ready
from ..markdown import SUMMARY_HEADERS, num, s, summary_row, table
from ..plots import figure, save
from ..procs import cpu_busy_s, memory_mib, tree_cpu_s
from ..stats import summary

PARAMS = {
    "quick": {"containers": 10, "boot_seconds": 1, "passes": 3, "claims": 5, "fill_timeout_s": 180},
    "full": {"containers": 100, "boot_seconds": 2, "passes": 5, "claims": 20, "fill_timeout_s": 900},
}


def run(ctx: Context) -> dict:
    p = ctx.params(PARAMS)
    spec = pool_spec(p["boot_seconds"], target_idle=0, max_total=p["containers"] + 10)
    with ctx.stack("scale", spec) as stack:
        ready(stack, spec)
        memory_empty = memory(stack)
        fill = fill_pool(ctx, stack, p)
        memory_full = memory(stack)
        manager = PoolManager(harness_settings(stack, spec))
        try:
            passes = [timed_reconcile(manager) for _ in range(p["passes"])]
            claims = [timed_claim(manager, i) for i in range(p["claims"])]
        finally:
            manager.close()
    result = {"params": p, "fill_s": fill["fill_s"], "memory_empty": memory_empty, "memory_full": memory_full,
              "reconcile_pass": summary([x["duration_s"] for x in passes]),
              "reconcile_wall": summary([x["wall_s"] for x in passes]),
              "claim": summary(claims), "fill_create_calls": fill["create_calls"], "fill_boot": fill["boot"],
              "fill_cpu_s_per_container": fill["cpu_s_per_container"],
              "fill_greenroom_cpu_s_per_container": fill["greenroom_cpu_s_per_container"]}
    result["plots"] = [plot(ctx, fill["samples"], p["containers"])]
    return result


def fill_pool(ctx, stack, p: dict) -> dict:
    """target_idle 0 -> containers; until all idle. The containers' records then tell
    when each create call was made (after the PATCH) and how long each took to boot."""
    origin, cpu_before, own_before = time.time(), cpu_busy_s(), tree_cpu_s(stack.pids())
    bar = ctx.progress(None, f"scale: filling {p['containers']} containers")
    with stack.client() as client, Sampler(stack, origin, 0.5) as sampler:
        scale(client, target_idle=p["containers"])
        wait_until_settled(client, p["containers"], p["fill_timeout_s"])
        fill_s = time.time() - origin
    cpu_s, own_cpu_s = cpu_busy_s() - cpu_before, tree_cpu_s(stack.pids()) - own_before
    bar.close()
    records = Records(stack)
    rows = list(records.all().values())
    records.close()
    return {"fill_s": fill_s, "samples": sampler.samples, "cpu_s_per_container": cpu_s / p["containers"],
            "greenroom_cpu_s_per_container": own_cpu_s / p["containers"],
            "create_calls": summary([r["created_at"] - origin for r in rows]),
            "boot": summary([r["idle_at"] - r["created_at"] for r in rows if "idle_at" in r])}


def memory(stack) -> dict:
    """MiB of greenroom's processes (and of its Redis, apart)."""
    trees = memory_mib(stack.pids())
    total = {key: sum(t[key] for t in trees.values()) for key in ("rss_mib", "pss_mib", "processes")}
    redis = memory_mib({"redis": stack.redis.process.pid})["redis"] if stack.redis else None
    return {"greenroom": total, "by_program": trees, "redis": redis}


def timed_reconcile(manager: PoolManager) -> dict:
    began = time.perf_counter()
    report = manager.reconcile("chatbot")
    wall = time.perf_counter() - began
    return {"duration_s": report.duration_s if report else float("nan"), "wall_s": wall}


def timed_claim(manager: PoolManager, index: int) -> float:
    session = f"bench-scale-{index}"
    began = time.perf_counter()
    manager.claim("chatbot", session)
    took = time.perf_counter() - began
    manager.close_session(session)
    return took


def plot(ctx: Context, samples: list[dict], target: int) -> str:
    path = ctx.plot_path("scale-fill")
    fig, axes = figure(1, 1, width=9, height=3.6)
    ax = axes[0]
    t = [x["t"] for x in samples]
    for state in ("idle", "warming"):
        ax.step(t, [x[state] for x in samples], where="post", label=state)
    ax.axhline(target, color="grey", ls="--", label="target_idle")
    ax.set_xlabel("seconds after target_idle 0 -> %d" % target)
    ax.set_ylabel("containers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)
    return path.name


def markdown(result: dict) -> str:
    p = result["params"]
    rows = [summary_row("reconcile pass (ReconcileReport.duration_s), pool full", result["reconcile_pass"]),
            summary_row("reconcile call, wall (lock, flag, pass)", result["reconcile_wall"]),
            summary_row("claim (PoolManager.claim)", result["claim"]),
            summary_row("fill: create calls, after the PATCH", result["fill_create_calls"]),
            summary_row("fill: boot of each (create call to idle)", result["fill_boot"])]
    mem = [[when, num(m["greenroom"]["rss_mib"], ".0f"), num(m["greenroom"]["pss_mib"], ".0f"),
            m["greenroom"]["processes"], num((m["redis"] or {}).get("rss_mib"), ".0f"),
            ", ".join(f"{k} {v['rss_mib']:.0f}" for k, v in m["by_program"].items())]
           for when, m in (("empty pool", result["memory_empty"]), (f"{p['containers']} idle", result["memory_full"]))]
    return "\n\n".join([
        f"{p['containers']} idle containers, BOOT_SECONDS={p['boot_seconds']}: the pool filled in "
        f"{s(result['fill_s'], 1)} s (target_idle 0 -> {p['containers']}, PATCH to all idle), using "
        f"{s(result['fill_cpu_s_per_container'])} CPU-seconds of the machine per container (everything running: "
        f"dockerd, the servers' own start), of which greenroom's processes "
        f"{s(result['fill_greenroom_cpu_s_per_container'], 3)}. Times in ms.",
        table(SUMMARY_HEADERS, rows),
        "Memory of greenroom's own processes (MiB; RSS counts shared pages in every process, PSS shares them out):",
        table(["", "RSS", "PSS", "processes", "Redis RSS", "RSS by program"], mem)])

