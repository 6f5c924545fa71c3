"""The issue's targets, evaluated from the results: goals to report, never assertions.

Each row: id, target (the goal in words), measured (in words), value and limit (numbers,
or None when the scenario did not run or failed), met (True, False, or None when unknown).
"""

MS = 1000


def overhead_p50(kind: str):
    def check(result: dict) -> tuple:
        seq = result["sequential"]
        overhead, floor = seq["overhead"][kind]["p50"], seq["latency"]["ping"]["p50"]
        measured = f"{overhead * MS:.1f} ms (2 x Celery round trip {floor * MS:.1f} ms = {2 * floor * MS:.1f} ms)"
        return overhead, 2 * floor, measured, overhead <= 2 * floor

    return check


def overhead_p99(kind: str):
    def check(result: dict) -> tuple:
        p99 = result["sequential"]["overhead"][kind]["p99"]
        return p99, 0.025, f"{p99 * MS:.1f} ms", p99 < 0.025

    return check


def warm_vs_cold(result: dict) -> tuple:
    boots = result["by_boot"]
    boot = "5" if "5" in boots else max(boots, key=float)  # quick mode runs shorter boots only
    data = boots[boot]
    note = "" if boot == "5" else f"; BOOT_SECONDS={boot} (quick mode)"
    measured = (f"{data['ratio_p50']:.0f}x (cold {data['cold']['p50']:.2f} s / "
                f"warm {data['warm']['p50'] * MS:.1f} ms{note})")
    return data["ratio_p50"], 100, measured, data["ratio_p50"] >= 100


def arrivals_warm(result: dict) -> tuple:
    phases = [p for p in result["phases"] if p["load"] <= 0.8 + 1e-9 and not p["sized"]]
    worst = min(phases, key=lambda p: p["warm_fraction"])
    measured = "; ".join(f"{p['warm_fraction'] * 100:.1f}% at {p['load'] * 100:.0f}% (n={p['sessions']})"
                         for p in phases)
    return worst["warm_fraction"], 0.99, measured, worst["warm_fraction"] >= 0.99


def refill_create(result: dict) -> tuple:
    p50 = result["claim_to_create"]["p50"]
    return p50, 0.050, f"{p50 * MS:.1f} ms", p50 < 0.050


def burst_slowest(result: dict) -> tuple:
    slowest, limit = result["slowest_wait"]["max"], result["params"]["boot_seconds"] + 1
    return slowest, limit, f"{slowest:.2f} s (one boot + 1 s = {limit:g} s)", slowest < limit


def tenants_follow_up(result: dict) -> tuple:
    alone, flooded = result["alone"]["follow_up"]["p99"], result["flooded"]["follow_up"]["p99"]
    refused = sum(count for answer, count in result["noisy"].items() if answer.startswith("429"))
    measured = (f"{flooded * MS:.1f} ms flooded vs {alone * MS:.1f} ms alone; "
                f"{refused} of the noisy tenant's submissions answered 429")
    return flooded, 2 * alone, measured, flooded <= 2 * alone


def streaming_first(result: dict) -> tuple:
    overhead, floor = result["by_clients"]["1"]["overhead"]["first"]["p50"], result["ping"]["p50"]
    measured = f"{overhead * MS:.1f} ms (2 x Celery round trip {floor * MS:.1f} ms = {2 * floor * MS:.1f} ms)"
    return overhead, 2 * floor, measured, overhead <= 2 * floor


def streaming_gap(result: dict) -> tuple:
    gap = result["by_clients"]["1"]["overhead"]["gap"]["p50"]
    return gap, 0.001, f"{gap * MS:.2f} ms", gap < 0.001


def streaming_many(result: dict) -> tuple:
    many = result["many"]
    measured = f"{many['done']} of {many['streams']} reached [DONE], {many['error_count']} errors"
    return many["error_count"], 0, measured, many["error_count"] == 0 and many["streams"] >= 200


def connections_held(result: dict) -> tuple:
    data = result["models"]["default"]
    row = max(data["levels"], key=lambda r: r["open"])
    p99 = row["healthz"]["p99"]
    return p99, 0.050, f"/healthz p99 {p99 * MS:.1f} ms with {row['open']} long polls open; {data['held']} held", \
        p99 < 0.050 and row["open"] >= 2000


def waiting_calls(result: dict) -> tuple:
    quiet, most = result["cost"][0], result["cost"][-1]
    extra = (most["commands_per_s"] - quiet["commands_per_s"]) / most["waiting"]
    measured = (f"{extra:.2f} per job per second ({most['commands_per_s']:.0f}/s with {most['waiting']} waiting, "
                f"{quiet['commands_per_s']:.0f}/s with none)")
    return extra, 1, measured, extra <= 1


def waiting_threads(result: dict) -> tuple:
    held = max(level["tasks_executing"] for level in result["cost"])
    return held, 0, f"at most {held} chat tasks executing while up to {result['cost'][-1]['waiting']} wait", held == 0


def waiting_handoff(result: dict) -> tuple:
    p50 = result["idle_to_running"]["p50"]
    return p50, 0.005, f"p50 {p50 * MS:.1f} ms, p99 {result['idle_to_running']['p99'] * MS:.1f} ms", p50 < 0.005


def waiting_follow_up(result: dict) -> tuple:
    alone, most = result["cost"][0]["follow_up"]["p50"], result["cost"][-1]["follow_up"]["p50"]
    measured = f"p50 {most * MS:.1f} ms with {result['cost'][-1]['waiting']} waiting vs {alone * MS:.1f} ms with none"
    return most, 1.1 * alone, measured, most <= 1.1 * alone


def sizing_auto(result: dict) -> tuple:
    c = result["auto_vs_fixed"]
    warm, idle = c["auto_warm"], c["auto_idle_s"]
    if c["fixed_as_warm"] is None:
        rival, cheaper = "no fixed target measured was as warm", True
    else:
        rival = f"fixed {c['fixed_as_warm']}: {c['fixed_idle_s']:.0f} idle container-s"
        cheaper = idle < c["fixed_idle_s"]
    measured = f"{warm * 100:.1f}% warm, {idle:.0f} idle container-s ({rival})"
    return warm, 0.99, measured, warm >= 0.99 and cheaper


def sizing_step(result: dict) -> tuple:
    ph = next(p for p in result["phases"] if p["target"] == "auto" and "step_at_s" in p)
    warm = ph["warm_after_recovery"]
    measured = (f"{warm * 100:.1f}% warm from {ph['recovery_allowance_s']:.1f} s after the step "
                f"(n={ph['sessions_after_recovery']}; {ph['warm_right_after_step'] * 100:.1f}% before that)")
    return warm, 0.95, measured, warm > 0.95


def sizing_rollout(result: dict) -> tuple:
    ro = result["rollout"]
    dropped = ro["failed"] + ro["held_sessions"] - ro["held_answered_after"]
    measured = (f"{ro['warm_fraction'] * 100:.1f}% of {ro['sessions']} new sessions warm, {dropped} dropped "
                f"(pool of {ro['pool_size']})")
    return ro["warm_fraction"], 0.99, measured, ro["warm_fraction"] >= 0.99 and dropped == 0


# (scenario, id, the goal, check: scenario result -> (value, limit, measured, met))
TARGETS = [
    ("overhead", "overhead_p50_jobs",
     "Overhead p50, submit + long poll, sequential: within 2x the bare Celery round trip", overhead_p50("jobs")),
    ("overhead", "overhead_p50_chat",
     "Overhead p50, /v1/chat/completions, sequential: within 2x the bare Celery round trip", overhead_p50("chat")),
    ("overhead", "overhead_p99_jobs", "Overhead p99, submit + long poll, sequential: under 25 ms",
     overhead_p99("jobs")),
    ("overhead", "overhead_p99_chat", "Overhead p99, /v1/chat/completions, sequential: under 25 ms",
     overhead_p99("chat")),
    ("warm_vs_cold", "warm_vs_cold_ratio",
     "New session, warm pool vs cold start, BOOT_SECONDS=5: at least 100x faster at p50", warm_vs_cold),
    ("arrivals", "arrivals_warm",
     "Poisson arrivals at up to 80% of refill capacity: at least 99% served warm", arrivals_warm),
    ("refill", "refill_create_p50", "Claim to the replacement's create call: p50 under 50 ms", refill_create),
    ("burst", "burst_slowest_wait",
     "Burst of 20 against target_idle 5: slowest wait under one boot time + 1 s", burst_slowest),
    ("tenants", "tenants_follow_up_p99",
     "A quiet tenant's follow-up p99 while a noisy tenant floods the API: within 2x its p99 alone",
     tenants_follow_up),
    ("connections", "connections_healthz_p99",
     "2,000 long polls held by one API process, /healthz p99 under 50 ms meanwhile", connections_held),
    ("streaming", "streaming_first_chunk", "Streamed reply, time to first chunk overhead p50: within 2x the bare "
     "Celery round trip", streaming_first),
    ("streaming", "streaming_gap", "Streamed reply, gap between chunks overhead p50: under 1 ms", streaming_gap),
    ("streaming", "streaming_many", "200 concurrent streams held with no error", streaming_many),
    ("waiting", "waiting_redis_calls", "Jobs waiting for a container: at most 1 Redis call per job per second",
     waiting_calls),
    ("waiting", "waiting_threads", "Jobs waiting for a container hold no worker thread", waiting_threads),
    ("waiting", "waiting_idle_to_running", "A container turning idle to the head job running: p50 under 5 ms",
     waiting_handoff),
    ("waiting", "waiting_follow_up", "Follow-up latency with the most jobs waiting: within 10% of none waiting",
     waiting_follow_up),
    ("sizing", "sizing_auto_80",
     "An auto idle target at 80% of refill capacity: at least 99% warm, with fewer idle container-seconds than the "
     "smallest fixed target as warm", sizing_auto),
    ("sizing", "sizing_step_recovery",
     "auto, arrivals stepping from 20% to 80% of refill capacity: above 95% warm from two boot times after the step",
     sizing_step),
    ("sizing", "sizing_rollout",
     "A rollout of a pool of 10 under 50% load: at least 99% of new sessions warm, no session dropped",
     sizing_rollout),
]


def evaluate(results: dict) -> list[dict]:
    return [evaluate_one(results["scenarios"].get(scenario), id, goal, check)
            for scenario, id, goal, check in TARGETS]


def evaluate_one(source: dict | None, id: str, goal: str, check) -> dict:
    row = {"id": id, "target": goal, "measured": "not run", "value": None, "limit": None, "met": None}
    if source is not None and "error" in source:
        row["measured"] = "scenario failed"
    elif source is not None:
        try:
            value, limit, measured, met = check(source)
        except (TypeError, KeyError, ValueError) as exc:  # a missing or non-numeric figure
            row["measured"] = f"not measured ({type(exc).__name__}: {exc})"
        else:
            row.update(value=value, limit=limit, measured=measured, met=bool(met))
    return row
