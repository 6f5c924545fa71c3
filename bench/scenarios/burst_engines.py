"""Burst, two engines: the burst scenario (same parameters, same measures) against one pool
spread over two Docker engines, the machine's and a second dockerd of the bench's own
(bench/second_dockerd.py, root only), each driven by its own pool worker. Reported right
after the one-engine burst. On one machine both engines share its CPUs: this measures
greenroom's split (placement, the hop to the second engine's worker), not more capacity."""

import secrets

import docker

from ..client import Records
from ..context import Context, pool_spec, ready
from ..markdown import SUMMARY_HEADERS, s, summary_row, table
from ..second_dockerd import SecondDockerd
from . import burst

PARAMS = {"quick": burst.PARAMS["quick"], "full": burst.PARAMS["full"]}
PROGRAMS = ("api", "chat", "pool-a", "pool-b", "beat")


def run(ctx: Context) -> dict:
    if why := SecondDockerd.refusal():
        return {"skipped": why, "params": ctx.params(PARAMS), "plots": []}
    p = ctx.params(PARAMS)
    daemon = SecondDockerd(f"greenroom-bench-{secrets.token_hex(3)}")
    try:
        daemon.start()
        source = docker.from_env()
        daemon.load_image(source)
        source.close()
        rounds = run_rounds(ctx, p, daemon)
    finally:
        daemon.remove()
    result = {"params": p, **burst.summarize(rounds), "rounds": rounds}
    result["replacements_by_engine"] = [r["by_engine"] for r in rounds]
    result["plots"] = [burst.plot(ctx, rounds, p["boot_seconds"], "burst-engines")]
    return result


def run_rounds(ctx: Context, p: dict, daemon: SecondDockerd) -> list[dict]:
    spec = pool_spec(p["boot_seconds"], target_idle=p["target_idle"], max_total=p["max_total"])
    engines = {"a": {"port_range": [20000, 24999]}, "b": {"docker_host": daemon.url, "port_range": [25000, 29999]}}
    stack = ctx.stack("burst-engines", spec, engines=engines)
    rounds = []
    try:
        stack.start(*PROGRAMS)
        ready(stack, spec)
        records = Records(stack)
        for _ in range(p["rounds"]):
            with stack.client() as client:
                one = burst.one_burst(stack, records, p["sessions"]) | {"idle_after": burst.settle(client, p)}
            one["by_engine"] = {e: sum(1 for row in one["replacements"] if row["engine"] == e) for e in engines}
            rounds.append(one)
        records.close()
    finally:
        stack.stop()
        for name in daemon.containers(stack.deployment):
            daemon.client.api.remove_container(name, force=True)
    return rounds


def markdown(result: dict) -> str:
    if "skipped" in result:
        return f"Not run: {result['skipped']}."
    p = result["params"]
    rows = [summary_row("wait (queued + waited for a container)", result["wait"], s),
            summary_row("slowest wait of a round", result["slowest_wait"], s),
            summary_row("replacement create call, after the burst", result["replacement_create"], s),
            summary_row("replacement boot (create call to idle)", result["replacement_boot"], s)]
    return "\n\n".join([
        f"Two engines (this machine's dockerd and a second one beside it), one pool worker each; "
        f"{p['rounds']} round(s) of {p['sessions']} sessions at once; target_idle {p['target_idle']}, "
        f"max_total {p['max_total']}, BOOT_SECONDS={p['boot_seconds']}. Times in seconds. "
        f"Served warm: {result['served_warm']} of {result['sessions']} (failed: {result['failed']}); "
        f"replacements per round: {result['replacements_per_round']}, placed by engine: "
        f"{result['replacements_by_engine']}; idle once at rest again: {result['idle_after']}. "
        "Compare with the one-engine burst above (same parameters).",
        table(SUMMARY_HEADERS, rows)])
