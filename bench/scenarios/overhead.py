"""Overhead: the same chat to a zero-delay model, (a) straight to a container and (b)
through greenroom in an existing session (no claim): POST /v1/jobs + GET ?wait=30, and
POST /v1/chat/completions; with the bare Celery round trip (send_task + get of
greenroom.ping) as the floor. One round sends each of the four once, in a shuffled
order, so machine noise hits every side; sequential, then 8 clients at once.

Requests are paced (pace_s before each), as a person's chat messages are, and then sent
back to back once more: a model server that writes a response's headers and body in two
sends without TCP_NODELAY (the reference server did, before disable_nagle_algorithm)
makes a request that follows the previous one on the same connection within ~40 ms wait
for the client's delayed ACK; the back-to-back run shows such a stall."""

import random
import threading
import time

from workers.names import CHAT_QUEUE, PING_TASK

from ..client import Records, chat_in_session, direct_chat, job_in_session, new_session, wait_until_settled
from ..context import Context, celery_app, pool_spec, ready
from ..markdown import SUMMARY_HEADERS, summary_row, table
from ..plots import cdf, figure, log_ms_axis, save
from ..stats import summary

PARAMS = {
    "quick": {"boot_seconds": 1, "rounds": 30, "clients": 8, "rounds_per_client": 6, "warmup": 3,
              "pace_s": 0.05, "back_to_back_rounds": 15},
    "full": {"boot_seconds": 1, "rounds": 300, "clients": 8, "rounds_per_client": 100, "warmup": 20,
             "pace_s": 0.05, "back_to_back_rounds": 100},
}
KINDS = ("direct", "jobs", "chat", "ping")
VIA_GREENROOM = ("jobs", "chat")


def run(ctx: Context) -> dict:
    p = ctx.params(PARAMS)
    spec = pool_spec(p["boot_seconds"], target_idle=2, max_total=p["clients"] + 4)
    with ctx.stack("overhead", spec) as stack:
        ready(stack, spec)
        sessions = open_sessions(stack, p["clients"])
        with stack.client() as client:  # no replacement boots while measuring
            wait_until_settled(client, spec["target_idle"], 60, sessions_open=True)
        rounds = {
            "sequential": measure(ctx, stack, spec, sessions[:1], p["rounds"], p["warmup"], p["pace_s"]),
            "concurrent": measure(ctx, stack, spec, sessions, p["rounds_per_client"], p["warmup"], p["pace_s"]),
            "back_to_back": measure(ctx, stack, spec, sessions[:1], p["back_to_back_rounds"], p["warmup"], 0.0),
        }
    result = {"params": p, **{mode: summarize(samples) for mode, samples in rounds.items()}}
    result["plots"] = [plot(ctx, rounds)]
    return result


def open_sessions(stack, count: int) -> list[tuple[str, str, str]]:
    """count sessions, each (session id, its container's endpoint, its container's key)."""
    records = Records(stack)
    sessions = []
    with stack.client() as client:
        for _ in range(count):
            meta = new_session(client)["greenroom"]
            record = records.container(meta["container"])
            sessions.append((meta["session_id"], record["endpoint"], record["key"]))
    records.close()
    return sessions


def measure(ctx, stack, spec, sessions, rounds: int, warmup: int, pace_s: float) -> list[dict]:
    """Every client runs warmup + rounds rounds in its own session, all at once."""
    mode = "sequential" if len(sessions) == 1 else f"{len(sessions)} clients"
    mode += "" if pace_s else ", back to back"
    bar = ctx.progress(len(sessions) * (rounds + warmup), f"overhead, {mode}")
    start = threading.Barrier(len(sessions))
    results: list[list[dict]] = [[] for _ in sessions]
    threads = [threading.Thread(target=client_loop,
                                args=(stack, spec, session, rounds + warmup, pace_s, start, bar, out, seed))
               for seed, (session, out) in enumerate(zip(sessions, results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    bar.close()
    return [sample for samples in results for sample in samples[warmup:]]


def client_loop(stack, spec, session, rounds, pace_s, start, bar, out, seed) -> None:
    session_id, endpoint, key = session
    rng = random.Random(seed)
    app = celery_app(stack, spec)
    with stack.client(timeout=30) as api, stack.client(timeout=30) as direct:
        send = {
            "direct": lambda: direct_chat(direct, endpoint, key),
            "jobs": lambda: job_in_session(api, session_id),
            "chat": lambda: chat_in_session(api, session_id),
            "ping": lambda: app.send_task(PING_TASK, queue=CHAT_QUEUE).get(timeout=30),
        }
        start.wait(60)
        for _ in range(rounds):
            out.append(one_round(send, rng, pace_s))
            bar.update()
    app.close()


def one_round(send: dict, rng: random.Random, pace_s: float) -> dict:
    order = list(KINDS)
    rng.shuffle(order)
    sample = {}
    for kind in order:
        time.sleep(pace_s)
        began = time.perf_counter()
        reply = send[kind]()
        sample[kind] = time.perf_counter() - began
        if kind in VIA_GREENROOM:
            sample[f"{kind}_timings"] = reply["greenroom"]["timings"]
    return sample


def summarize(samples: list[dict]) -> dict:
    latency = {kind: summary([s[kind] for s in samples]) for kind in KINDS}
    overhead = {kind: summary([s[kind] - s["direct"] for s in samples]) for kind in VIA_GREENROOM}
    floor = latency["ping"]["p50"]
    return {"latency": latency, "overhead": overhead, "breakdown": {k: breakdown(samples, k) for k in VIA_GREENROOM},
            "overhead_p50_over_ping_p50": {k: overhead[k]["p50"] / floor for k in VIA_GREENROOM}}


def breakdown(samples: list[dict], kind: str) -> dict:
    """Where a request through greenroom spends its time, from the job's own timings:
    queued (API wrote the job -> a worker began it), in the container, the rest of the
    worker's part, and outside the job (the HTTP requests, the reply's way back)."""
    parts = {"queued": [], "in_container": [], "worker_other": [], "outside_job": []}
    for sample in samples:
        t = sample[f"{kind}_timings"]
        parts["queued"].append(t["queued_s"])
        parts["in_container"].append(t["in_container_s"])
        parts["worker_other"].append(t["total_s"] - t["queued_s"] - t["in_container_s"])
        parts["outside_job"].append(sample[kind] - t["total_s"])
    return {name: summary(values) for name, values in parts.items()}


def plot(ctx: Context, rounds: dict) -> str:
    path = ctx.plot_path("overhead")
    fig, axes = figure(1, 3, width=15, height=3.8)
    for ax, (mode, samples) in zip(axes, rounds.items()):
        for kind in KINDS:
            cdf(ax, [s[kind] for s in samples], LABELS[kind])
        log_ms_axis(ax)
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"zero-delay chat: {MODES[mode]}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    save(fig, path)
    return path.name


MODES = {"sequential": "sequential, paced", "concurrent": "8 concurrent clients, paced",
         "back_to_back": "sequential, back to back (no pacing)"}
PARTS = {"queued": "queued (job written -> worker began)", "in_container": "in the container",
         "worker_other": "rest of the worker's part", "outside_job": "outside the job (HTTP in and out)"}
LABELS = {"direct": "straight to the container", "jobs": "greenroom: POST /v1/jobs + GET ?wait",
          "chat": "greenroom: POST /v1/chat/completions", "ping": "bare Celery round trip (ping)"}


def markdown(result: dict) -> str:
    p = result["params"]
    parts = [f"Zero-delay model; {p['rounds']} sequential rounds, then {p['clients']} clients x "
             f"{p['rounds_per_client']} rounds, each in its own session and container, then "
             f"{p['back_to_back_rounds']} sequential rounds back to back (after {p['warmup']} warm-up rounds "
             f"each); every round sends each kind once, in a shuffled order, {p['pace_s'] * 1000:.0f} ms apart "
             "(except back to back). Times in ms. Overhead = greenroom minus direct, per round."]
    for mode in MODES:
        data = result[mode]
        rows = [summary_row(LABELS[k], data["latency"][k]) for k in KINDS]
        rows += [summary_row(f"overhead: {LABELS[k]} minus direct", data["overhead"][k]) for k in VIA_GREENROOM]
        rows += [summary_row(f"  {LABELS[k].split(': ')[1]}: {PARTS[part]}", data["breakdown"][k][part])
                 for k in VIA_GREENROOM for part in PARTS]
        title = MODES[mode][0].upper() + MODES[mode][1:]
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in data["overhead_p50_over_ping_p50"].items() if v is not None)
        parts += [f"**{title}** (overhead p50 / ping p50: {ratios})", table(SUMMARY_HEADERS, rows)]
    return "\n\n".join(parts)

