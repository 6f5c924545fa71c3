"""Connections: many open long polls against one API process, and what they cost the
requests beside them. An API-only stack (no workers: the polled job stays queued, so
every poll is held for its whole wait), N raw sockets each holding `GET /v1/jobs/<id>
?wait=60`, then `/healthz` and `POST /v1/jobs` timed one at a time; the API's memory
before and after gives the cost of one open request. Run for the serving model before
this change (gthread, 32 threads) and the default one, side by side. Then the largest
number held: more sockets in steps until one is answered early or refused."""

import socket
import time

import httpx

from ..context import Context
from ..markdown import SUMMARY_HEADERS, num, summary_row, table
from ..plots import figure, save
from ..procs import memory_mib
from ..stack import UNLIMITED, Stack
from ..stats import summary

# Open polls per level and ramp, per serving model. gthread gets small levels only: a
# closed poll holds its thread until its wait is over, so 500 take 8 minutes to drain.
PARAMS = {
    "quick": {"probes": 10, "models": {"default": {"levels": [0, 200, 500], "ramp": [1000]}}},
    "full": {"probes": 30, "models": {"gthread": {"levels": [0, 80], "ramp": []},
                                      "default": {"levels": [0, 500, 2000], "ramp": [2000, 3000, 4000, 5000]}}},
}
POLL_WAIT_S = 60  # every poll is held this long (the job never ends: no workers)
PROBE_TIMEOUT_S = 10
SERVING = {"gthread": ("--workers", "1", "--worker-class", "gthread", "--threads", "32"),  # before
           "default": ("--workers", "1")}
POOL = {"command": ["python3", "images/chatbot/server.py"], "runtime": "process", "target_idle": 0}
# Polls are spread over tenants: one tenant may hold max_open_waits_per_tenant (1,000) at once.
TOKENS = {f"tenant{n}": f"tenant{n}-token-0123456789" for n in range(8)}


def run(ctx: Context) -> dict:
    p = ctx.params(PARAMS)
    result = {"params": p, "models": {}}
    for model, counts in p["models"].items():
        with Stack(ctx.workdir / f"connections-{model}", POOL, api_args=SERVING[model], max_wait_s=POLL_WAIT_S,
                   tokens=TOKENS, tenant_limits=UNLIMITED) as stack:
            stack.kill("chat")
            stack.kill("pool")
            stack.kill("beat")
            jobs = {}
            for tenant in TOKENS:
                with stack.client(tenant, timeout=120) as client:
                    jobs[tenant] = client.post("/v1/jobs", json=job()).json()["id"]
            result["models"][model] = {"levels": [level(stack, jobs, n, p["probes"]) for n in counts["levels"]],
                                       "held": largest_held(stack, jobs, counts["ramp"])}
    result["plots"] = [plot(ctx, result)]
    return result


def level(stack: Stack, jobs: dict[str, str], count: int, probes: int) -> dict:
    """count polls held open; /healthz and submit latency meanwhile (a probe unanswered in
    PROBE_TIMEOUT_S counts as failed); the API's memory."""
    drained(stack)
    memory_before = api_memory(stack)
    sockets = open_polls(stack, jobs, count)
    try:
        time.sleep(1 + count / 500)  # let the API take them in
        with stack.client(timeout=PROBE_TIMEOUT_S) as client:  # opened now: no keep-alive gone stale
            healthz = timed(lambda: client.get("/healthz"), probes)
            submit = timed(lambda: client.post("/v1/jobs", json=job()), probes)
        memory_after = api_memory(stack)
        answered_early = sum(answered(s) for s in sockets)
    finally:
        close(sockets)
    per_connection = (memory_after - memory_before) * 1024 / count if count else None
    return {"open": count, "healthz": summary(healthz["ok"]), "healthz_failed": healthz["failed"],
            "submit": summary(submit["ok"]), "submit_failed": submit["failed"],
            "api_mib": memory_after, "kib_per_connection": per_connection, "answered_early": answered_early}


def largest_held(stack: Stack, jobs: dict[str, str], ramp: list[int]) -> int:
    """The most polls held at once with none answered early or refused, and /healthz
    answering within 5 s: stepping up the ramp until a step fails."""
    held = 0
    for count in ramp:
        drained(stack)
        sockets = []
        try:
            sockets = open_polls(stack, jobs, count)
            time.sleep(1 + count / 500)
            ok = not any(answered(s) for s in sockets) and httpx.get(f"{stack.api_url}/healthz",
                                                                     timeout=5).status_code == 200
        except (OSError, httpx.HTTPError):
            ok = False
        finally:
            close(sockets)
        if not ok:
            break
        held = count
        time.sleep(5)  # the closed polls leave the caps (max_open_waits: 5,000 a process)
    return held


def drained(stack: Stack) -> None:
    """Wait until the API answers again: a server that holds a thread per poll keeps
    serving closed polls until their wait is over."""
    deadline = time.monotonic() + POLL_WAIT_S + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{stack.api_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
    raise TimeoutError("the API did not answer again after its polls were closed")


def open_polls(stack: Stack, jobs: dict[str, str], count: int) -> list[socket.socket]:
    """count raw connections, each sending a long poll of one tenant's queued job (round
    robin over the tenants) and reading nothing."""
    host, port = stack.api_url.removeprefix("http://").split(":")
    requests = [(f"GET /v1/jobs/{job_id}?wait={POLL_WAIT_S} HTTP/1.1\r\nHost: {host}\r\n"
                 f"Authorization: Bearer {TOKENS[tenant]}\r\n\r\n").encode() for tenant, job_id in jobs.items()]
    sockets = []
    for n in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(requests[n % len(requests)])
        sockets.append(sock)
    return sockets


def answered(sock: socket.socket) -> bool:
    """The server answered (or closed) before the poll's wait was over."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) is not None
    except BlockingIOError:
        return False
    except OSError:
        return True


def close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def timed(call, count: int) -> dict:
    ok, failed = [], 0
    for _ in range(count):
        began = time.perf_counter()
        try:
            response = call()
            if response.status_code >= 400:
                raise httpx.HTTPStatusError(str(response.status_code), request=response.request, response=response)
            ok.append(time.perf_counter() - began)
        except httpx.HTTPError:
            failed += 1
    return {"ok": ok, "failed": failed}


def api_memory(stack: Stack) -> float:
    return memory_mib({"api": stack.pids()["api"]})["api"]["rss_mib"]


def job() -> dict:
    return {"model": "chatbot", "messages": [{"role": "user", "content": "hold"}]}


def plot(ctx: Context, result: dict) -> str:
    path = ctx.plot_path("connections")
    fig, axes = figure(1, 2, width=11, height=3.6)
    for model, data in result["models"].items():
        opened = [row["open"] for row in data["levels"]]
        for ax, key in zip(axes, ("healthz", "submit")):
            ax.plot(opened, [(row[key].get("p99") or float("nan")) * 1000 for row in data["levels"]], "o-",
                    label=f"{model} p99")
    for ax, key in zip(axes, ("GET /healthz", "POST /v1/jobs")):
        ax.set_yscale("log")
        ax.set_xlabel("long polls held open")
        ax.set_ylabel(f"{key} (ms)")
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, path)
    return path.name


def markdown(result: dict) -> str:
    parts = [f"One API process; each open request a `GET /v1/jobs/<id>?wait={POLL_WAIT_S}` held by the server. "
             "Latency in ms; memory is the API process tree's RSS."]
    for model, data in result["models"].items():
        rows = []
        for row in data["levels"]:
            rows.append(summary_row(f"/healthz, {row['open']} open", row["healthz"]) + [row["healthz_failed"]])
            rows.append(summary_row(f"submit, {row['open']} open", row["submit"]) + [row["submit_failed"]])
        early = sum(row["answered_early"] for row in data["levels"])
        memory = ", ".join(f"{row['open']} open: {num(row['api_mib'], '.0f')} MiB"
                           + (f" ({num(row['kib_per_connection'], '.0f')} KiB each)" if row["open"] else "")
                           for row in data["levels"])
        held = (f"largest number held (none answered early, /healthz within 5 s): {data['held']}"
                if result["params"]["models"][model]["ramp"] else "largest number held: not ramped")
        parts += [f"**{model}** ({' '.join(SERVING[model])}): {held}.", table([*SUMMARY_HEADERS, "failed"], rows),
                  f"Memory: {memory}. Polls answered before their wait was over: {early}."]
    return "\n\n".join(parts)
