"""Burst: 20 new sessions at once against target_idle 5 (max_total 30). Each session's
wait (queued + waited for a container, from the job's timings) against one boot time:
all replacements should start in one reconcile, so the slowest wait stays near one boot.
The replacements' create calls and idle times (container records in Redis) show how the
pool answered."""

import threading
import time

from ..client import Records, close_session, new_session, wait_until_settled
from ..context import Context, pool_spec, ready
from ..markdown import SUMMARY_HEADERS, s, summary_row, table
from ..plots import figure, save
from ..stats import summary

PARAMS = {
    "quick": {"boot_seconds": 2, "sessions": 20, "target_idle": 5, "max_total": 30, "rounds": 1},
    "full": {"boot_seconds": 5, "sessions": 20, "target_idle": 5, "max_total": 30, "rounds": 3},
}


def run(ctx: Context) -> dict:
    p = ctx.params(PARAMS)
    spec = pool_spec(p["boot_seconds"], target_idle=p["target_idle"], max_total=p["max_total"])
    bar = ctx.progress(p["rounds"], "burst")
    rounds = []
    with ctx.stack("burst", spec) as stack:
        ready(stack, spec)
        records = Records(stack)
        for _ in range(p["rounds"]):
            with stack.client() as client:
                rounds.append(one_burst(stack, records, p["sessions"]) | {"idle_after": settle(client, p)})
            bar.update()
        records.close()
    bar.close()
    result = {"params": p, **summarize(rounds), "rounds": rounds}
    result["plots"] = [plot(ctx, rounds, p["boot_seconds"])]
    return result


def one_burst(stack, records: Records, count: int) -> dict:
    """count sessions at once; their waits, then the pool's containers, then close them."""
    replies: list[dict | None] = [None] * count
    start = threading.Barrier(count + 1)
    threads = [threading.Thread(target=one_session, args=(stack, start, replies, i)) for i in range(count)]
    for thread in threads:
        thread.start()
    start.wait(60)
    origin = time.time()
    for thread in threads:
        thread.join(300)
    containers = records.all()
    with stack.client() as client:
        for reply in replies:
            if reply:
                close_session(client, reply["greenroom"]["session_id"])
    return {"sessions": [session_row(r) for r in replies if r], "failed": sum(r is None for r in replies),
            "replacements": replacement_rows(containers, origin)}


def one_session(stack, start: threading.Barrier, replies: list, index: int) -> None:
    with stack.client(timeout=300) as client:
        start.wait(60)
        began = time.perf_counter()
        try:
            reply = new_session(client, poll_s=300)
        except Exception:  # noqa: BLE001  counted as failed, the burst goes on
            return
        reply["client_s"] = time.perf_counter() - began
        replies[index] = reply


def session_row(reply: dict) -> dict:
    meta, timings = reply["greenroom"], reply["greenroom"]["timings"]
    queued, waited = timings["queued_s"], timings["waited_for_container_s"]
    return {"warm": meta["warm"], "client_s": reply["client_s"], "queued_s": queued, "waited_s": waited,
            "wait_s": queued + waited}


def replacement_rows(containers: dict[str, dict], origin: float) -> list[dict]:
    """Containers created after the burst began: their create call and idle times."""
    rows = [{"create_s": c["created_at"] - origin, "idle_s": c["idle_at"] - origin if "idle_at" in c else None,
             "engine": c.get("engine", "local")}
            for c in containers.values() if c.get("created_at", 0) > origin]
    return sorted(rows, key=lambda r: r["create_s"])


def settle(client, p: dict) -> int:
    """Wait until the pool is at rest again; the idle count then (above target: overshoot)."""
    return wait_until_settled(client, p["target_idle"], 120 + 4 * p["boot_seconds"])["idle"]


def summarize(rounds: list[dict]) -> dict:
    sessions = [row for r in rounds for row in r["sessions"]]
    replacements = [row for r in rounds for row in r["replacements"]]
    return {
        "wait": summary([row["wait_s"] for row in sessions]),
        "slowest_wait": summary([max((row["wait_s"] for row in r["sessions"]), default=float("nan")) for r in rounds]),
        "client": summary([row["client_s"] for row in sessions]),
        "served_warm": sum(row["warm"] for row in sessions),
        "sessions": len(sessions),
        "failed": sum(r["failed"] for r in rounds),
        "replacements_per_round": [len(r["replacements"]) for r in rounds],
        "create_waves_per_round": [waves([row["create_s"] for row in r["replacements"]]) for r in rounds],
        "create_spread": summary([r["replacements"][-1]["create_s"] - r["replacements"][0]["create_s"]
                                  for r in rounds if r["replacements"]]),
        "replacement_create": summary([row["create_s"] for row in replacements]),
        "replacement_idle": summary([row["idle_s"] for row in replacements if row["idle_s"] is not None]),
        "replacement_boot": summary([row["idle_s"] - row["create_s"] for row in replacements
                                     if row["idle_s"] is not None]),
        "idle_after": [r["idle_after"] for r in rounds],
    }


def waves(create_times: list[float], gap_s: float = 0.25) -> int:
    """Groups of create calls more than gap_s apart: roughly, the reconcile passes that
    started them (a pass makes its creates at once, in parallel)."""
    ordered = sorted(create_times)
    return sum(1 for i, t in enumerate(ordered) if i == 0 or t - ordered[i - 1] > gap_s)


def plot(ctx: Context, rounds: list[dict], boot: float, name: str = "burst") -> str:
    path = ctx.plot_path(name)
    fig, axes = figure(1, 2, width=12, height=3.8)
    for i, r in enumerate(rounds):
        waits = sorted(row["wait_s"] for row in r["sessions"])
        axes[0].plot(range(1, len(waits) + 1), waits, marker="o", ms=3, color=f"C{i}", label=f"round {i + 1}")
        creates = [row["create_s"] for row in r["replacements"]]
        idle = [(row["idle_s"], n) for n, row in enumerate(r["replacements"]) if row["idle_s"] is not None]
        axes[1].scatter(creates, range(len(creates)), s=25, marker="|", color=f"C{i}",
                        label=f"round {i + 1}: create call")
        axes[1].scatter([t for t, _ in idle], [n for _, n in idle], s=10, color=f"C{i}", label=f"round {i + 1}: idle")
    axes[0].axhline(boot + 1, color="red", ls="--", label="one boot + 1 s")
    axes[0].set_xlabel("sessions, by wait")
    axes[0].set_ylabel("wait before the container (s)")
    axes[1].set_xlabel("seconds after the burst")
    axes[1].set_ylabel("replacement containers, by create call")
    axes[0].legend(fontsize=7, loc="upper left")
    axes[1].legend(fontsize=7, loc="center left")
    for ax in axes:
        ax.grid(alpha=0.3)
    save(fig, path)
    return path.name


def markdown(result: dict) -> str:
    p = result["params"]
    rows = [summary_row("wait (queued + waited for a container)", result["wait"], s),
            summary_row("slowest wait of a round", result["slowest_wait"], s),
            summary_row("client: request to reply", result["client"], s),
            summary_row("replacement create call, after the burst", result["replacement_create"], s),
            summary_row("replacement idle, after the burst", result["replacement_idle"], s),
            summary_row("replacement boot (create call to idle)", result["replacement_boot"], s),
            summary_row("first to last create call of a round", result["create_spread"], s)]
    return "\n\n".join([
        f"{p['rounds']} round(s) of {p['sessions']} sessions at once; target_idle {p['target_idle']}, "
        f"max_total {p['max_total']}, BOOT_SECONDS={p['boot_seconds']}. Times in seconds. "
        f"Served warm: {result['served_warm']} of {result['sessions']} (failed: {result['failed']}); "
        f"replacements started per round: {result['replacements_per_round']}, in waves of create calls "
        f"(passes, roughly): {result['create_waves_per_round']}; idle once at rest again: "
        f"{result['idle_after']}.",
        table(SUMMARY_HEADERS, rows)])
