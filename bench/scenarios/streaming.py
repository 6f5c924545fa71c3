"""Streaming: the time to the first chunk and the gaps between chunks of a streamed reply,
straight from the container against through greenroom (POST /v1/chat/completions with
"stream": true, in an open session: no claim), in paired rounds (each round streams one
of each, in a shuffled order), by 1 client and by 8 at once; the bare Celery round trip
(ping) as the floor. Then many streams at once (more than the pool has sessions: they
queue for their session's turn), each to its [DONE], counting errors."""

import json
import random
import threading
import time

import httpx

from workers.names import CHAT_QUEUE, PING_TASK

from ..client import MESSAGES, MODEL, Records, new_session, wait_until_settled
from ..context import Context, celery_app, pool_spec, ready
from ..markdown import SUMMARY_HEADERS, ms, summary_row, table
from ..plots import cdf, figure, log_ms_axis, save
from ..stats import summary

PARAMS = {
    "quick": {"boot_seconds": 1, "chunk_s": 0.02, "clients": [1, 8], "rounds": 5, "streams": 40},
    "full": {"boot_seconds": 1, "chunk_s": 0.02, "clients": [1, 8], "rounds": 40, "streams": 200},
}


def run(ctx: Context) -> dict:
    p = ctx.params(PARAMS)
    clients = max(p["clients"])
    spec = pool_spec(p["boot_seconds"], target_idle=2, max_total=clients + 4, env={
        "BOOT_SECONDS": str(p["boot_seconds"]), "STREAM_CHUNK_SECONDS": str(p["chunk_s"])})
    with ctx.stack("streaming", spec) as stack:
        ready(stack, spec)
        sessions = open_sessions(stack, clients)
        with stack.client() as client:
            wait_until_settled(client, spec["target_idle"], 60, sessions_open=True)
        app = celery_app(stack, spec)
        ping = [timed_ping(app) for _ in range(20)]
        app.close()
        by_clients = {n: measure(ctx, stack, sessions[:n], p["rounds"]) for n in p["clients"]}
        many = many_streams(stack, sessions, p["streams"])
    result = {"params": p, "ping": summary(ping),
              "by_clients": {str(n): summarize(rows) for n, rows in by_clients.items()}, "many": many}
    result["plots"] = [plot(ctx, by_clients)]
    return result


def open_sessions(stack, count: int) -> list[tuple[str, str, str]]:
    """count sessions: (session id, its container's endpoint, its key)."""
    records, sessions = Records(stack), []
    with stack.client() as client:
        for _ in range(count):
            meta = new_session(client)["greenroom"]
            record = records.container(meta["container"])
            sessions.append((meta["session_id"], record["endpoint"], record["key"]))
    records.close()
    return sessions


def measure(ctx: Context, stack, sessions: list, rounds: int) -> list[dict]:
    """Every client, in its own session, streams `rounds` paired rounds, all at once."""
    bar = ctx.progress(len(sessions) * rounds, f"streaming, {len(sessions)} client(s)")
    results: list[list[dict]] = [[] for _ in sessions]
    start = threading.Barrier(len(sessions))
    threads = [threading.Thread(target=client_rounds, args=(stack, session, rounds, start, bar, out, seed))
               for seed, (session, out) in enumerate(zip(sessions, results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    bar.close()
    return [row for rows in results for row in rows]


def client_rounds(stack, session, rounds: int, start, bar, out: list, seed: int) -> None:
    session_id, endpoint, key = session
    rng = random.Random(seed)
    with stack.client(timeout=60) as api, httpx.Client(timeout=60) as direct:
        send = {"direct": lambda: stream(direct, f"{endpoint}/v1/chat/completions", key, {}),
                "greenroom": lambda: stream(api, "/v1/chat/completions", stack.token, {"session_id": session_id})}
        start.wait(60)
        for _ in range(rounds):
            order = list(send)
            rng.shuffle(order)
            out.append({kind: send[kind]() for kind in order})
            bar.update()


def stream(client: httpx.Client, url: str, token: str, extra: dict) -> dict:
    """One streamed chat: the time to its first chunk and the gaps between its chunks."""
    body = {"model": MODEL, "messages": MESSAGES, "stream": True} | extra
    began, arrivals = time.perf_counter(), []
    with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {token}"}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:]).get("choices"):
                arrivals.append(time.perf_counter() - began)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {"first_s": arrivals[0], "gap_s": sorted(gaps)[len(gaps) // 2], "chunks": len(arrivals)}


def timed_ping(app) -> float:
    began = time.perf_counter()
    app.send_task(PING_TASK, queue=CHAT_QUEUE).get(timeout=30)
    return time.perf_counter() - began


def many_streams(stack, sessions: list, count: int) -> dict:
    """count streams at once over the open sessions (one message at a time per session:
    most wait for their turn, holding their stream open); how many reached [DONE]."""
    outcomes: list[str] = []
    start = threading.Barrier(count)

    def one(n: int) -> None:
        session_id = sessions[n % len(sessions)][0]
        body = {"model": MODEL, "messages": MESSAGES, "stream": True, "session_id": session_id}
        try:
            with stack.client(timeout=600) as api:
                start.wait(60)
                with api.stream("POST", "/v1/chat/completions", json=body) as response:
                    lines = list(response.iter_lines())
            outcomes.append("done" if "data: [DONE]" in lines else f"ended: {lines[-2:]}")
        except (httpx.HTTPError, threading.BrokenBarrierError) as exc:
            outcomes.append(f"error: {type(exc).__name__}")

    began = time.monotonic()
    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(900)
    errors = [o for o in outcomes if o != "done"]
    return {"streams": count, "done": len(outcomes) - len(errors), "errors": errors[:5],
            "error_count": len(errors), "seconds": time.monotonic() - began}


def summarize(rows: list[dict]) -> dict:
    out = {kind: {"first": summary([r[kind]["first_s"] for r in rows]),
                  "gap": summary([r[kind]["gap_s"] for r in rows])} for kind in ("direct", "greenroom")}
    out["overhead"] = {"first": summary([r["greenroom"]["first_s"] - r["direct"]["first_s"] for r in rows]),
                       "gap": summary([r["greenroom"]["gap_s"] - r["direct"]["gap_s"] for r in rows])}
    return out


def plot(ctx: Context, by_clients: dict) -> str:
    path = ctx.plot_path("streaming")
    fig, axes = figure(1, 2, width=11, height=3.6)
    for clients, rows in by_clients.items():
        for kind in ("direct", "greenroom"):
            cdf(axes[0], [r[kind]["first_s"] for r in rows], f"{kind}, {clients} client(s)")
            cdf(axes[1], [r[kind]["gap_s"] for r in rows], f"{kind}, {clients} client(s)")
    for ax, what in zip(axes, ("time to first chunk (ms)", "median gap between chunks (ms)")):
        log_ms_axis(ax)
        ax.set_xlabel(what)
        ax.set_ylabel("fraction of streams")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, path)
    return path.name


def markdown(result: dict) -> str:
    p = result["params"]
    parts = [f"A model streaming a word every {p['chunk_s'] * 1000:.0f} ms; {p['rounds']} paired rounds per client. "
             f"Bare Celery round trip (ping) p50 {ms(result['ping']['p50'])} ms. Times in ms."]
    for clients, data in result["by_clients"].items():
        rows = [summary_row(f"first chunk, {kind}", data[kind]["first"]) for kind in ("direct", "greenroom")]
        rows += [summary_row("first chunk, overhead", data["overhead"]["first"])]
        rows += [summary_row(f"gap between chunks, {kind}", data[kind]["gap"]) for kind in ("direct", "greenroom")]
        rows += [summary_row("gap between chunks, overhead", data["overhead"]["gap"])]
        parts += [f"**{clients} client(s)**", table(SUMMARY_HEADERS, rows)]
    many = result["many"]
    parts.append(f"{many['streams']} streams at once over {max(p['clients'])} sessions: {many['done']} reached "
                 f"[DONE], {many['error_count']} did not ({many['errors']}), in {many['seconds']:.1f} s.")
    return "\n\n".join(parts)
