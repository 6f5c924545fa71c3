"""Arrivals: new sessions (each one chat, then the session is closed) arriving as a
Poisson process at several fractions of the pool's refill capacity, each for a fixed
time; the fraction served warm, wait percentiles, and the containers by state over time
(GET /v1/pools every 0.25 s).

Refill capacity, as measured here: C = target_idle / T_refill, where T_refill is the
time from a claim to its replacement being idle (the median of a few solo claims, as in
the refill scenario). Each claim starts one replacement at once, so on average
rate x T_refill replacements are in flight and idle = target_idle - that; C is the rate
at which idle reaches zero on average. max_total caps idle + warming + assigned; here it
is set well above target_idle + rate x (T_refill + session time), so it does not bind.
Parallel boots share the CPUs: boots under load are measured and reported per phase.

With Poisson arrivals the replacements in flight at an arrival are Poisson(rate x
T_refill) (an M/D/inf queue); an arrival is served warm when fewer than target_idle are
in flight, so the best any pool can do is P(Poisson(load x target_idle) < target_idle).
That prediction is reported next to the measurement."""

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..client import Records, RecordLog, Sampler, close_session, new_session, scale, wait_until_settled
from ..context import Context, pool_spec, ready
from ..markdown import SUMMARY_HEADERS, num, pct, s, summary_row, table
from ..plots import figure, save
from ..stats import percentile, poisson_cdf, summary
from .refill import one_claim

PARAMS = {
    "quick": {"boot_seconds": 1, "target_idle": 3, "max_total": 20, "window_s": 8, "loads": [0.4, 0.8, 1.2],
              "calibration_claims": 2},
    "full": {"boot_seconds": 2, "target_idle": 5, "max_total": 30, "window_s": 75, "loads": [0.4, 0.8, 1.2],
             "calibration_claims": 5},
}
MAX_SESSIONS_AT_ONCE = 64


def run(ctx: Context) -> dict:
    p = ctx.params(PARAMS)
    spec = pool_spec(p["boot_seconds"], target_idle=p["target_idle"], max_total=p["max_total"])
    with ctx.stack("arrivals", spec) as stack:
        ready(stack, spec)
        records = Records(stack)
        refill_s = calibrate(stack, records, p)
        capacity = p["target_idle"] / refill_s
        phases = [phase(ctx, stack, records, p, load * capacity, refill_s, seed)
                  for seed, load in enumerate(p["loads"])]
        phases.append(sized_phase(ctx, stack, records, p, 0.8 * capacity, refill_s, p["loads"].index(0.8)))
        records.close()
    for ph in phases:
        ph["load"] = ph["rate_per_s"] / capacity
    result = {"params": p, "refill_s": refill_s, "capacity_per_s": capacity, "phases": phases}
    result["plots"] = [plot(ctx, phases)]
    return result


def calibrate(stack, records: Records, p: dict) -> float:
    """T_refill: the median claim -> replacement idle time of a few solo claims."""
    times = []
    with stack.client() as client:
        for _ in range(p["calibration_claims"]):
            wait_until_settled(client, p["target_idle"], 60)
            times.append(one_claim(client, records, p["boot_seconds"])["claim_to_idle_s"])
    return percentile(times, 50)


def phase(ctx, stack, records, p: dict, rate: float, refill_s: float, seed: int,
          target_idle: int | None = None) -> dict:
    """Poisson arrivals at rate for window_s, against target_idle (the spec's unless given)."""
    target_idle = target_idle or p["target_idle"]
    arrivals = poisson_times(rate, p["window_s"], random.Random(seed))
    with stack.client() as client:
        wait_until_settled(client, target_idle, 120)
    origin = time.time()
    log = RecordLog(records)
    bar = ctx.progress(len(arrivals), f"arrivals at {rate:.2f}/s, target_idle {target_idle}")
    with Sampler(stack, origin, 0.25, log) as sampler:
        sessions = run_sessions(stack, arrivals, origin, bar)
        time.sleep(1)
    bar.close()
    result = summarize(rate, target_idle, sessions, sampler.samples, log.rows(), origin, p["window_s"])
    return result | predictions(result, refill_s)


def predictions(phase: dict, refill_s: float) -> dict:
    """The M/D/inf bound on the warm fraction, at the nominal and at the realized rate."""
    def bound(rate: float) -> float:
        return poisson_cdf(phase["target_idle"] - 1, rate * refill_s)

    return {"predicted_warm_fraction": bound(phase["rate_per_s"]),
            "predicted_at_realized_rate": bound(phase["realized_rate_per_s"])}


def sized_phase(ctx, stack, records, p: dict, rate: float, refill_s: float, seed: int) -> dict:
    """The same arrivals (the same seed) with target_idle sized so that the prediction
    reaches 99%."""
    sized = next(n for n in range(1, p["max_total"]) if poisson_cdf(n - 1, rate * refill_s) >= 0.99)
    with stack.client() as client:
        scale(client, target_idle=sized)
    return phase(ctx, stack, records, p, rate, refill_s, seed, target_idle=sized) | {"sized": True}


def poisson_times(rate: float, window: float, rng: random.Random) -> list[float]:
    """Arrival times in [0, window) of a Poisson process of the given rate."""
    times, t = [], rng.expovariate(rate)
    while t < window:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def run_sessions(stack, arrivals: list[float], origin: float, bar) -> list[dict]:
    """Each arrival starts its session on time, in a thread of its own (up to 64)."""
    local, clients = threading.local(), []
    try:
        with ThreadPoolExecutor(MAX_SESSIONS_AT_ONCE) as pool:
            futures = []
            for t in arrivals:
                time.sleep(max(0.0, origin + t - time.time()))
                futures.append(pool.submit(one_session, stack, local, clients, t, bar))
            return [future.result(timeout=600) for future in futures]
    finally:
        for client in clients:
            client.close()


def one_session(stack, local: threading.local, clients: list, t: float, bar) -> dict:
    if not hasattr(local, "client"):
        local.client = stack.client(timeout=300)
        clients.append(local.client)
    began = time.perf_counter()
    try:
        reply = new_session(local.client, poll_s=300)
        close_session(local.client, reply["greenroom"]["session_id"])
    except Exception as exc:  # noqa: BLE001  counted as failed; the phase goes on
        return {"t": t, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        bar.update()
    timings = reply["greenroom"]["timings"]
    return {"t": t, "warm": reply["greenroom"]["warm"], "waited_s": timings["waited_for_container_s"],
            "client_s": time.perf_counter() - began}


def summarize(rate, target_idle, sessions, samples, containers, origin, window_s) -> dict:
    served = [x for x in sessions if "error" not in x]
    misses = [x for x in served if not x["warm"]]
    boots = [c["idle_at"] - c["created_at"] for c in containers
             if "idle_at" in c and c.get("created_at", 0) >= origin]
    return {
        "rate_per_s": rate, "target_idle": target_idle, "sized": False,
        "realized_rate_per_s": len(sessions) / window_s,
        "sessions": len(served), "failed": len(sessions) - len(served),
        "warm_fraction": (len(served) - len(misses)) / len(served) if served else float("nan"),
        "waited": summary([x["waited_s"] for x in served]),
        "waited_when_missed": summary([x["waited_s"] for x in misses]),
        "session_time": summary([x["client_s"] for x in served]),
        "boot_under_load": summary(boots),
        "peak_assigned": max((x["assigned"] for x in samples), default=0),
        "peak_total": max((x["idle"] + x["warming"] + x["assigned"] for x in samples), default=0),
        "min_idle": min((x["idle"] for x in samples), default=0),
        "overtaken": overtaken(served),
        "per_session": sessions,  # t (s after the start), warm, waited_s, client_s; or error
        "pool_samples": samples,  # GET /v1/pools every 0.25 s: t, idle, warming, assigned
    }


def overtaken(sessions: list[dict], margin_s: float = 0.05) -> int:
    """Sessions that waited for a container while one that arrived after them got one
    first (claim time = arrival + wait; margin_s for the clocks' granularity)."""
    claims = [(x["t"], x["t"] + x["waited_s"]) for x in sessions]
    return sum(1 for t, claim in claims if claim > t and any(t2 > t and c2 < claim - margin_s for t2, c2 in claims))


def plot(ctx: Context, phases: list[dict]) -> str:
    path = ctx.plot_path("arrivals")
    fig, axes = figure(len(phases), 1, width=10, height=2.8)
    for ax, ph in zip(axes, phases):
        samples = ph["pool_samples"]
        t = [x["t"] for x in samples]
        for state in ("assigned", "idle", "warming"):
            ax.step(t, [x[state] for x in samples], where="post", label=state)
        misses = [x["t"] for x in ph["per_session"] if not x.get("warm", True)]
        ax.plot(misses, [0] * len(misses), "rx", label="arrival served cold")
        ax.set_title(f"{ph['load'] * 100:.0f}% of refill capacity ({ph['rate_per_s']:.2f}/s), target_idle "
                     f"{ph['target_idle']}: {ph['warm_fraction'] * 100:.1f}% warm "
                     f"(predicted {ph['predicted_warm_fraction'] * 100:.1f}%)", fontsize=10)
        ax.set_ylabel("containers")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("seconds")
    save(fig, path)
    return path.name


def markdown(result: dict) -> str:
    p = result["params"]
    head = (f"target_idle {p['target_idle']}, max_total {p['max_total']}, BOOT_SECONDS={p['boot_seconds']}, "
            f"{p['window_s']} s per rate. Measured T_refill (claim to replacement idle, median of "
            f"{p['calibration_claims']} solo claims) = {num(result['refill_s'])} s, so refill capacity "
            f"C = target_idle / T_refill = {num(result['capacity_per_s'])} new sessions/s. Predicted = "
            "P(Poisson(rate x T_refill) < target_idle), the best possible with Poisson arrivals, at the nominal "
            "rate and (in brackets) at the rate the random arrivals actually had. The last row "
            "replays the 80% arrivals (same seed) with target_idle sized for a 99% prediction. Waiters overtaken: "
            "sessions that waited for a container while a later arrival got one first.")
    rows = [phase_row(ph) for ph in result["phases"]]
    headers = ["load", "rate/s (realized)", "target_idle", "sessions", "failed", "warm", "predicted (realized)",
               "wait p50 (s)", "wait p99 (s)", "wait p50 when cold (s)", "waiters overtaken", "boot p50 under load (s)",
               "min idle", "peak total"]
    waits = [summary_row(f"wait at {pct(ph['load'])}, target_idle {ph['target_idle']}", ph["waited"], s)
             for ph in result["phases"]]
    return "\n\n".join([head, table(headers, rows), "Waits for a container (s):", table(SUMMARY_HEADERS, waits)])


def phase_row(ph: dict) -> list:
    return [pct(ph["load"]), f"{num(ph['rate_per_s'])} ({num(ph['realized_rate_per_s'])})", ph["target_idle"],
            ph["sessions"], ph["failed"], pct(ph["warm_fraction"]),
            f"{pct(ph['predicted_warm_fraction'])} ({pct(ph['predicted_at_realized_rate'])})",
            s(ph["waited"]["p50"]), s(ph["waited"]["p99"]), s(ph["waited_when_missed"]["p50"]), ph["overtaken"],
            s(ph["boot_under_load"]["p50"]), ph["min_idle"], ph["peak_total"]]
