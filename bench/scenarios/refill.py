"""Refill reaction: the time from a claim to its replacement's create call, and to the
replacement becoming idle. New sessions one at a time, each only once the pool is at
rest, so that each claim triggers exactly one replacement: the container of the pool
created first after the claim's assigned_at (times from the container records in Redis:
created_at is recorded just before the runtime's create call)."""

from ..client import Records, close_session, new_session, wait_until_settled
from ..context import Context, pool_spec, ready
from ..markdown import SUMMARY_HEADERS, summary_row, table
from ..plots import figure, integer_y, save
from ..stack import wait_until
from ..stats import summary

PARAMS = {
    "quick": {"boot_seconds": 1, "target_idle": 2, "samples": 5},
    "full": {"boot_seconds": 2, "target_idle": 2, "samples": 30},
}


def run(ctx: Context) -> dict:
    p = ctx.params(PARAMS)
    spec = pool_spec(p["boot_seconds"], target_idle=p["target_idle"], max_total=p["target_idle"] + 4)
    with ctx.stack("refill", spec) as stack:
        ready(stack, spec)
        rows = measure(ctx, stack, p["target_idle"], p["samples"], p["boot_seconds"])
    result = {"params": p, **summarize(rows), "samples": rows}
    result["plots"] = [plot(ctx, rows)]
    return result


def measure(ctx: Context, stack, target_idle: int, samples: int, boot: float) -> list[dict]:
    bar = ctx.progress(samples, "refill")
    records, rows = Records(stack), []
    with stack.client() as client:
        for _ in range(samples):
            wait_until_settled(client, target_idle, 60 + boot)
            rows.append(one_claim(client, records, boot))
            bar.update()
    records.close()
    bar.close()
    return rows


def one_claim(client, records: Records, boot: float) -> dict:
    """One new session; its replacement's timings relative to the claim; then close it."""
    meta = new_session(client)["greenroom"]
    assigned_at = records.container(meta["container"])["assigned_at"]
    replacement = wait_until(lambda: replaced(records, assigned_at), 30 + 3 * boot, 0.02,
                             message="the replacement to become idle")
    close_session(client, meta["session_id"])
    return {"claim_to_create_s": replacement["created_at"] - assigned_at,
            "claim_to_idle_s": replacement["idle_at"] - assigned_at,
            "boot_s": replacement["idle_at"] - replacement["created_at"], "warm": meta["warm"]}


def replaced(records: Records, assigned_at: float) -> dict | None:
    """The first container created after assigned_at, once it is idle."""
    later = [r for r in records.all().values() if r.get("created_at", 0) > assigned_at]
    first = min(later, key=lambda r: r["created_at"], default=None)
    return first if first and "idle_at" in first else None


def summarize(rows: list[dict]) -> dict:
    return {key.removesuffix("_s"): summary([r[key] for r in rows])
            for key in ("claim_to_create_s", "claim_to_idle_s", "boot_s")}


def plot(ctx: Context, rows: list[dict]) -> str:
    path = ctx.plot_path("refill")
    fig, axes = figure(1, 2, width=11, height=3.6)
    axes[0].hist([r["claim_to_create_s"] * 1000 for r in rows], bins=20)
    axes[0].set_xlabel("claim to replacement's create call (ms)")
    axes[1].hist([r["claim_to_idle_s"] for r in rows], bins=20)
    axes[1].set_xlabel("claim to replacement idle (s)")
    for ax in axes:
        ax.set_ylabel("claims")
        integer_y(ax)
        ax.grid(alpha=0.3)
    save(fig, path)
    return path.name


def markdown(result: dict) -> str:
    p = result["params"]
    rows = [summary_row("claim to replacement's create call", result["claim_to_create"]),
            summary_row("claim to replacement idle", result["claim_to_idle"]),
            summary_row("replacement boot (create call to idle)", result["boot"])]
    return "\n\n".join([f"{p['samples']} sequential claims, BOOT_SECONDS={p['boot_seconds']}, "
                        f"target_idle {p['target_idle']}. Times in ms.", table(SUMMARY_HEADERS, rows)])
