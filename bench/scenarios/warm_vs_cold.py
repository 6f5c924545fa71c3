"""Warm vs cold: a new session through greenroom with a warm pool (POST
/v1/chat/completions without a session; the session is closed afterwards, untimed) versus
the pool-less baseline, which per session starts a container of the same image with the
same options (docker-py create + start, host network, a free port), polls /healthz until
200, sends the chat, and removes the container (untimed). Alternating, per BOOT_SECONDS."""

import secrets
import time

import httpx

from pool_manager.runtimes.docker import DockerRuntime, container_options
from pool_manager.settings import PoolSpec

from ..client import close_session, direct_chat, new_session
from ..context import Context, pool_spec, ready
from ..markdown import SUMMARY_HEADERS, num, pct, summary_row, table
from ..plots import figure, save
from ..stack import OWNER_LABEL, free_port
from ..stats import summary

PARAMS = {
    "quick": {"boot_seconds": [2], "samples": 3},
    "full": {"boot_seconds": [2, 5], "samples": 20},
}
HEALTH_POLL_S = 0.05


def run(ctx: Context) -> dict:
    p = ctx.params(PARAMS)
    by_boot, raw = {}, {}
    for boot in p["boot_seconds"]:
        raw[boot] = compare(ctx, boot, p["samples"])
        by_boot[str(boot)] = summarize(raw[boot])
    return {"params": p, "by_boot": by_boot, "plots": [plot(ctx, raw)]}


def compare(ctx: Context, boot: float, samples: int) -> list[dict]:
    spec = pool_spec(boot, target_idle=2, max_total=6)
    bar = ctx.progress(samples, f"warm vs cold, BOOT_SECONDS={boot}")
    rows = []
    with ctx.stack(f"warm-vs-cold-{boot}", spec) as stack, stack.client() as api, httpx.Client() as direct:
        ready(stack, spec)
        docker = DockerRuntime(stack.deployment)
        try:
            for _ in range(samples):
                rows.append(warm(api) | cold(docker, direct, PoolSpec(**spec), stack.deployment))
                bar.update()
        finally:
            docker.close()
    bar.close()
    return rows


def warm(api: httpx.Client) -> dict:
    began = time.perf_counter()
    reply = new_session(api)
    took = time.perf_counter() - began
    close_session(api, reply["greenroom"]["session_id"])
    return {"warm_s": took, "served_warm": reply["greenroom"]["warm"]}


def cold(docker: DockerRuntime, direct: httpx.Client, spec: PoolSpec, owner: str) -> dict:
    """Start a container, wait for health, chat; phases timed; the container removed."""
    name, port = f"{owner}-cold-{secrets.token_hex(4)}", free_port()
    options = container_options(docker, name, "cold", spec, port, key := secrets.token_urlsafe(24))
    options["labels"] = {OWNER_LABEL: owner, "greenroom.bench": "cold-baseline"}  # not greenroom.managed
    endpoint = f"http://127.0.0.1:{port}"
    began = time.perf_counter()
    try:
        docker.client.containers.create(**options).start()
        started = time.perf_counter()
        wait_healthy(direct, endpoint, spec.boot_timeout_s)
        healthy = time.perf_counter()
        direct_chat(direct, endpoint, key)
        done = time.perf_counter()
    finally:
        docker.destroy(name)
    return {"cold_s": done - began, "cold_start_s": started - began, "cold_healthy_s": healthy - began}


def wait_healthy(client: httpx.Client, endpoint: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get(f"{endpoint}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(HEALTH_POLL_S)
    raise TimeoutError(f"{endpoint} not healthy within {timeout}s")


def summarize(rows: list[dict]) -> dict:
    warm_s, cold_s = summary([r["warm_s"] for r in rows]), summary([r["cold_s"] for r in rows])
    return {
        "warm": warm_s, "cold": cold_s,
        "cold_create_start": summary([r["cold_start_s"] for r in rows]),
        "cold_until_healthy": summary([r["cold_healthy_s"] for r in rows]),
        "ratio_p50": cold_s["p50"] / warm_s["p50"],
        "served_warm_fraction": sum(r["served_warm"] for r in rows) / len(rows),
    }


def plot(ctx: Context, raw: dict) -> str:
    path = ctx.plot_path("warm-vs-cold")
    fig, axes = figure(1, 1, width=8, height=3.8)
    ax = axes[0]
    labels, data = [], []
    for boot, rows in raw.items():
        labels += [f"warm pool\nBOOT_SECONDS={boot}", f"cold start\nBOOT_SECONDS={boot}"]
        data += [[r["warm_s"] * 1000 for r in rows], [r["cold_s"] * 1000 for r in rows]]
    ax.boxplot(data, showfliers=True)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("new session, time to first reply (ms, log)")
    ax.grid(alpha=0.3, axis="y")
    save(fig, path)
    return path.name


def markdown(result: dict) -> str:
    parts = [f"{result['params']['samples']} alternating samples per BOOT_SECONDS. Times in ms, from the "
             "request to the first reply (cold: from the create call)."]
    for boot, data in result["by_boot"].items():
        rows = [summary_row("warm pool (through greenroom)", data["warm"]),
                summary_row("cold start per session", data["cold"]),
                summary_row("  of which create + start", data["cold_create_start"]),
                summary_row("  of which until healthy", data["cold_until_healthy"])]
        parts += [f"**BOOT_SECONDS={boot}**: cold/warm p50 ratio {num(data['ratio_p50'], '.0f')}x; "
                  f"served warm {pct(data['served_warm_fraction'])}",
                  table(SUMMARY_HEADERS, rows)]
    return "\n\n".join(parts)
