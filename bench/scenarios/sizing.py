"""Sizing: fixed idle targets against `target_idle = "auto"` (pool_manager/sizing.py), and a
rolling update under load.

Poisson arrivals of new sessions (one chat each, then the session is closed, as in the
arrivals scenario) at fractions of the refill capacity C = reference_idle / T_refill
(T_refill: claim to replacement idle, the median of a few solo claims; reference_idle 5
as in the arrivals scenario, so 80% here is the load the issue quotes), each load against
each fixed target and against auto; then a step from 20% to 80% of C, against the same
targets. Per phase: the share served warm, the wait p99, and the idle container-seconds
(greenroom's own counter, GET /v1/pools' idle_container_seconds, its growth over the
phase). At each steady load the auto phase runs right after the fixed ones at that load,
so its arrival window already holds that load (a pool in steady state); the step phases
start at 20% for longer than the arrival window plus the cooldown, so auto starts from
the low load's target. The bench pool uses a shorter arrival window and cooldown than the
defaults (params), so phases stay short.

Last, a rollout: a pool of rollout_idle fixed idle containers under 50% of its own
refill capacity (rollout_idle / T_refill), a few sessions held open across it; a quarter
into the phase `POST /v1/pools/chatbot/rollout` (what `greenroom pool rollout` does). The
warm share of new sessions from then on, failed sessions, and whether each held session
still answers afterwards."""

import random
import threading
import time

from ..client import ChatFailed, Records, RecordLog, close_session, job_in_session, new_session, pool_status, scale
from ..context import Context, pool_spec, ready
from ..markdown import num, pct, s, table
from ..plots import figure, save
from ..stack import wait_until
from ..stats import summary
from .arrivals import calibrate, poisson_times, run_sessions

PARAMS = {
    "quick": {"boot_seconds": 1, "reference_idle": 3, "max_total": 30, "window_s": 10, "loads": [0.8],
              "targets": [2, "auto"], "step": [0.2, 0.8], "step_at_s": 10, "step_targets": ["auto"],
              "arrival_window_s": 10, "cooldown_s": 5, "min_idle": 1, "calibration_claims": 2,
              "rollout_idle": 4, "rollout_load": 0.5, "rollout_window_s": 12, "rollout_held": 2},
    "full": {"boot_seconds": 2, "reference_idle": 5, "max_total": 40, "window_s": 45, "loads": [0.4, 0.8, 1.2],
             "targets": [2, 5, 10, "auto"], "step": [0.2, 0.8], "step_at_s": 50, "step_targets": [2, 5, 10, "auto"],
             "arrival_window_s": 30, "cooldown_s": 15, "min_idle": 1, "calibration_claims": 5,
             "rollout_idle": 10, "rollout_load": 0.5, "rollout_window_s": 60, "rollout_held": 5},
}
WARM_AFTER_STEP = 0.95
SAMPLE_S = 0.25


def run(ctx: Context) -> dict:
    p = ctx.params(PARAMS)
    spec = pool_spec(p["boot_seconds"], target_idle=p["reference_idle"], max_total=p["max_total"],
                     arrival_window_s=p["arrival_window_s"], scale_down_cooldown_s=p["cooldown_s"],
                     min_idle=p["min_idle"])
    with ctx.stack("sizing", spec) as stack:
        ready(stack, spec)
        records = Records(stack)
        refill_s = calibrate(stack, records, p | {"target_idle": p["reference_idle"]})
        capacity = p["reference_idle"] / refill_s
        phases, seed = [], 0
        for load in p["loads"]:
            for target in p["targets"]:
                seed += 1
                phases.append(phase(ctx, stack, records, p, target, steady(load * capacity, p["window_s"], seed)))
        for target in p["step_targets"]:
            seed += 1
            arrivals = step(p["step"][0] * capacity, p["step"][1] * capacity, p["step_at_s"], p["window_s"], seed)
            phases.append(phase(ctx, stack, records, p, target, arrivals, step_at=p["step_at_s"], refill_s=refill_s))
        rolled = rollout(ctx, stack, records, p, refill_s)
        records.close()
    for ph in phases:
        ph["load"] = "step" if "step_at_s" in ph else round(ph["rate_per_s"] / capacity, 2)
    result = {"params": p, "refill_s": refill_s, "capacity_per_s": capacity, "phases": phases, "rollout": rolled}
    result["auto_vs_fixed"] = compare(phases)
    result["plots"] = [plot(ctx, result)]
    return result


# ------------------------------------------------------------------ arrivals

def steady(rate: float, window_s: float, seed: int) -> tuple[list[float], float]:
    return poisson_times(rate, window_s, random.Random(seed)), rate


def step(low: float, high: float, at: float, after_s: float, seed: int) -> tuple[list[float], float]:
    rng = random.Random(seed)
    return poisson_times(low, at, rng) + [at + t for t in poisson_times(high, after_s, rng)], high


# ------------------------------------------------------------------ one phase

def phase(ctx, stack, records, p: dict, target, arrivals: tuple[list[float], float], step_at: float | None = None,
          refill_s: float | None = None) -> dict:
    """The arrivals against target (a number, or auto), from a settled pool."""
    times, rate = arrivals
    with stack.client() as client:
        scaled_at = time.time()
        scale(client, target_idle=target)
        settle(client, computed_after=scaled_at if target == "auto" else None)
        idle_before = pool_status(client)["idle_container_seconds"]
    label = f"{'step' if step_at else f'{rate:.2f}/s'}, target_idle {target}"
    bar = ctx.progress(len(times), f"sizing: {label}")
    origin, log = time.time(), RecordLog(records)
    with PoolSampler(stack, origin, log) as sampler:
        sessions = run_sessions(stack, times, origin, bar)
        time.sleep(1)
    bar.close()
    with stack.client() as client:
        idle_s = pool_status(client)["idle_container_seconds"] - idle_before
    duration = time.time() - origin
    result = summarize(sessions) | {"boot_under_load": summary(boots(log.rows(), origin)),
        "target": target, "rate_per_s": rate, "idle_container_seconds": idle_s, "duration_s": duration,
        "mean_idle": idle_s / duration, "samples": sampler.samples,
        "mean_target": _mean([x["target_idle"] for x in sampler.samples]),
        "max_target": max((x["target_idle"] for x in sampler.samples), default=0),
    }
    if step_at is not None:
        result |= after_step(sessions, step_at, 2 * refill_s)
    return result


def settle(client, timeout: float = 180, computed_after: float | None = None) -> dict:
    """Nothing warming or assigned, and at least the target idle (an auto pool's as a pass
    after computed_after computed it)."""
    def settled():
        status = pool_status(client)
        auto = status["target"].get("auto")
        if computed_after is not None and not (auto and auto["at"] > computed_after):
            return None
        return status if (not status["warming"] and not status["assigned"]
                          and status["idle"] >= status["target_idle"]) else None

    return wait_until(settled, timeout, interval=0.1, message="the pool to settle")


def summarize(sessions: list[dict]) -> dict:
    served = [x for x in sessions if "error" not in x]
    return {"sessions": len(served), "failed": len(sessions) - len(served),
            "warm_fraction": _share(served), "waited": summary([x["waited_s"] for x in served]),
            "per_session": sessions}


def after_step(sessions: list[dict], step_at: float, settle_s: float) -> dict:
    """The warm share of arrivals within settle_s (two boot times) of the step, and after."""
    served = [x for x in sessions if "error" not in x]
    return {"step_at_s": step_at, "recovery_allowance_s": settle_s,
            "warm_before_step": _share([x for x in served if x["t"] < step_at]),
            "warm_right_after_step": _share([x for x in served if step_at <= x["t"] < step_at + settle_s]),
            "warm_after_recovery": _share([x for x in served if x["t"] >= step_at + settle_s]),
            "sessions_after_recovery": sum(1 for x in served if x["t"] >= step_at + settle_s)}


def boots(containers: list[dict], origin: float) -> list[float]:
    """Create to idle of the containers created since origin (boots under the phase's load)."""
    return [c["idle_at"] - c["created_at"] for c in containers if "idle_at" in c and c.get("created_at", 0) >= origin]


def _share(sessions: list[dict]) -> float:
    return sum(1 for x in sessions if x["warm"]) / len(sessions) if sessions else float("nan")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


class PoolSampler:
    """GET /v1/pools/chatbot every SAMPLE_S in a thread: t, idle, warming, assigned, the
    effective idle target, and containers of an older spec."""

    def __init__(self, stack, origin: float, log: RecordLog):
        self.stack, self.origin, self.samples, self.log = stack, origin, [], log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sizing-sampler", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def _run(self):
        with self.stack.client(timeout=5) as client:
            while not self._stop.wait(SAMPLE_S):
                try:
                    st = pool_status(client)
                    self.log.snap()
                except Exception:  # noqa: BLE001  a missed sample, not a failed run
                    continue
                old = st["old"]
                self.samples.append({"t": time.time() - self.origin, "idle": st["idle"], "warming": st["warming"],
                                     "assigned": st["assigned"], "target_idle": st["target_idle"],
                                     "old": old["idle"] + old["warming"] + old["assigned"],
                                     "old_free": old["idle"] + old["warming"], "rollout": st["rollout"]})


# ------------------------------------------------------------------ rollout under load

def rollout(ctx, stack, records, p: dict, refill_s: float) -> dict:
    size = p["rollout_idle"]
    rate = p["rollout_load"] * size / refill_s
    times = poisson_times(rate, p["rollout_window_s"], random.Random(99))
    at = p["rollout_window_s"] / 4
    log = RecordLog(records)
    with stack.client(timeout=300) as client:
        scale(client, target_idle=size)
        settle(client)
        held = [new_session(client, poll_s=300)["greenroom"]["session_id"] for _ in range(p["rollout_held"])]
        spec_before = pool_status(client)["spec_hash"]
        bar = ctx.progress(len(times), f"sizing: rollout of {size} at {rate:.2f}/s")
        origin = time.time()
        timer = threading.Timer(at, lambda: _ask_rollout(stack))
        with PoolSampler(stack, origin, log) as sampler:
            timer.start()
            sessions = run_sessions(stack, times, origin, bar)
            replaced_idle = _replaced_at(sampler.samples, at)
        bar.close()
        timer.join()
        held_after = [_still_answers(client, sid) for sid in held]
        for sid in held:
            close_session(client, sid)
        done = wait_until(lambda: (st := pool_status(client))["rollout"] == "none" and st, 120, 0.2,
                          message="the rollout to finish")
    during = [x for x in sessions if x["t"] >= at]
    served = [x for x in during if "error" not in x]
    return {"pool_size": size, "rate_per_s": rate, "rollout_at_s": at, "sessions": len(served),
            "failed": len(during) - len(served) + sum(1 for x in sessions if "error" in x and x["t"] < at),
            "warm_fraction": _share(served), "waited": summary([x["waited_s"] for x in served]),
            "held_sessions": len(held), "held_answered_after": held_after.count("answered"),
            "held_not_answered": [why for why in held_after if why != "answered"],
            "boot_under_load": summary(boots(log.rows(), origin)),
            "old_idle_replaced_after_s": replaced_idle,
            "min_idle_during": min((x["idle"] for x in sampler.samples if x["t"] >= at), default=0),
            "spec_changed": done["spec_hash"] != spec_before, "per_session": sessions, "samples": sampler.samples}


def _ask_rollout(stack) -> None:
    with stack.client() as client:
        response = client.post("/v1/pools/chatbot/rollout")
        if response.status_code != 202:
            raise ChatFailed(f"POST rollout answered {response.status_code}: {response.text[:300]}")


def _replaced_at(samples: list[dict], at: float) -> float | None:
    """Seconds from the rollout until no idle or warming container of the old spec was left
    (those held by sessions stay until their sessions end)."""
    seen = False
    for x in samples:
        if x["t"] >= at:
            seen = seen or x["old_free"] > 0
            if seen and x["old_free"] == 0:
                return x["t"] - at
    return None


def _still_answers(client, session_id: str) -> str:
    """"answered", or why not (a session closed to make room at max_total says so)."""
    try:
        job_in_session(client, session_id)
        return "answered"
    except ChatFailed as exc:
        return " ".join(str(exc).split())[:200]


# ------------------------------------------------------------------ the report

def compare(phases: list[dict]) -> dict:
    """At 80%: auto's warm share and idle cost against the smallest fixed target as warm."""
    at = [ph for ph in phases if ph.get("load") == 0.8]
    auto = next((ph for ph in at if ph["target"] == "auto"), None)
    if auto is None:
        return {}
    as_warm = sorted((ph for ph in at if ph["target"] != "auto" and ph["warm_fraction"] >= auto["warm_fraction"]),
                     key=lambda ph: ph["target"])
    rival = as_warm[0] if as_warm else None
    return {"auto_warm": auto["warm_fraction"], "auto_idle_s": auto["idle_container_seconds"],
            "fixed_as_warm": rival["target"] if rival else None,
            "fixed_idle_s": rival["idle_container_seconds"] if rival else None}


def plot(ctx: Context, result: dict) -> str:
    """The effective target following the load: each auto phase (and the rollout)."""
    shown = [ph for ph in result["phases"] if ph["target"] == "auto"]
    path = ctx.plot_path("sizing")
    fig, axes = figure(len(shown) + 1, 1, width=10, height=2.6)
    for ax, ph in zip(axes, shown):
        t = [x["t"] for x in ph["samples"]]
        ax.step(t, [x["target_idle"] for x in ph["samples"]], where="post", label="effective target", lw=2)
        ax.step(t, [x["idle"] for x in ph["samples"]], where="post", label="idle", alpha=0.7)
        ax.step(t, [x["warming"] for x in ph["samples"]], where="post", label="warming", alpha=0.7)
        arrivals_per_s(ax.twinx(), ph["per_session"])
        misses = [x["t"] for x in ph["per_session"] if not x.get("warm", True)]
        ax.plot(misses, [0] * len(misses), "rx", label="served cold")
        if "step_at_s" in ph:
            ax.axvline(ph["step_at_s"], color="k", ls="--", lw=1)
        load = "step 20% -> 80%" if ph["load"] == "step" else f"{ph['load'] * 100:.0f}%"
        ax.set_title(f"auto at {load} of refill capacity: {ph['warm_fraction'] * 100:.1f}% warm, "
                     f"{ph['idle_container_seconds']:.0f} idle container-s", fontsize=10)
        ax.set_ylabel("containers")
        ax.legend(fontsize=7, loc="upper left")
    ro, ax = result["rollout"], axes[-1]
    t = [x["t"] for x in ro["samples"]]
    for key, label in (("idle", "idle"), ("old", "old spec"), ("warming", "warming"), ("assigned", "assigned")):
        ax.step(t, [x[key] for x in ro["samples"]], where="post", label=label)
    ax.axvline(ro["rollout_at_s"], color="k", ls="--", lw=1)
    ax.set_title(f"rollout of a pool of {ro['pool_size']} at 50% load: {ro['warm_fraction'] * 100:.1f}% of new "
                 f"sessions warm, {ro['failed']} failed", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("seconds")
    save(fig, path)
    return path.name


def arrivals_per_s(ax, sessions: list[dict], bucket: float = 2.0) -> None:
    if not sessions:
        return
    end = max(x["t"] for x in sessions)
    edges = [i * bucket for i in range(int(end // bucket) + 1)]
    counts = [sum(1 for x in sessions if e <= x["t"] < e + bucket) / bucket for e in edges]
    ax.plot([e + bucket / 2 for e in edges], counts, color="grey", ls=":", label="arrivals/s")
    ax.set_ylabel("arrivals/s", fontsize=8)


def markdown(result: dict) -> str:
    p = result["params"]
    head = (f"BOOT_SECONDS={p['boot_seconds']}, max_total {p['max_total']}, {p['window_s']} s per phase. "
            f"T_refill (median of {p['calibration_claims']} solo claims) = {num(result['refill_s'])} s; refill "
            f"capacity C = {p['reference_idle']} / T_refill = {num(result['capacity_per_s'])} new sessions/s. "
            f"auto: warm_goal 0.99, min_idle {p['min_idle']}, arrival window {p['arrival_window_s']} s, cooldown "
            f"{p['cooldown_s']} s (shorter than the defaults, 60 s each, to keep phases short). At each load the "
            "auto phase follows the fixed ones (its window holds that load). Idle container-s: the growth of "
            "greenroom_idle_container_seconds over the phase (with the settle time after its last arrival). Step: "
            f"{pct(p['step'][0])} of C for {p['step_at_s']} s, then {pct(p['step'][1])}; warm share within two "
            "T_refill of the step, and after.")
    rows = [[ph["load"] if ph["load"] == "step" else pct(ph["load"]), ph["target"],
             f"{num(ph['mean_target'], '.1f')} (max {ph['max_target']})", ph["sessions"], ph["failed"],
             pct(ph["warm_fraction"]), s(ph["waited"]["p99"]), num(ph["idle_container_seconds"], ".0f"),
             num(ph["mean_idle"], ".1f"), s(ph["boot_under_load"]["p50"]),
             (f"{pct(ph['warm_right_after_step'])} / {pct(ph['warm_after_recovery'])}" if "step_at_s" in ph else "")]
            for ph in result["phases"]]
    headers = ["load", "target_idle", "effective target, mean", "sessions", "failed", "warm", "wait p99 (s)",
               "idle container-s", "mean idle", "boot p50 under load (s)", "warm within 2 T of the step / after"]
    ro = result["rollout"]
    roll = (f"Rollout of a pool of {ro['pool_size']} (fixed) at {num(ro['rate_per_s'])} new sessions/s (50% of "
            f"its refill capacity), asked {num(ro['rollout_at_s'], '.0f')} s in: {ro['sessions']} new sessions from "
            f"then on, {pct(ro['warm_fraction'])} warm, wait p99 {s(ro['waited']['p99'])} s, {ro['failed']} failed; "
            f"lowest idle during it {ro['min_idle_during']}; every old idle container replaced after "
            f"{s(ro['old_idle_replaced_after_s'])} s; {ro['held_answered_after']} of {ro['held_sessions']} sessions "
            f"held open across it answered afterwards{_why_not(ro)}; boot p50 under load "
            f"{s(ro['boot_under_load']['p50'])} s.")
    return "\n\n".join([head, table(headers, rows), roll])


def _why_not(ro: dict) -> str:
    reasons = ro.get("held_not_answered") or []
    return f" (the others: {'; '.join(sorted(set(reasons)))})" if reasons else ""
