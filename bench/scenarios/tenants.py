"""Tenants: a quiet tenant's latency, alone and while a noisy one floods the API. With
the default tenant limits, chat concurrency and session_min_idle_s (the settings a user
runs). The quiet tenant keeps one conversation going through both phases (a follow-up
every second) and opens a short new session every two seconds; the noisy one submits new sessions from
eight threads as fast as the API answers, never closing them. Reported: the noisy
tenant's 429s by limit, and the quiet tenant's follow-up and new-session latency in
each phase."""

import threading
import time
from collections import Counter

import httpx

from pool_manager.settings import TenantLimits

from ..client import MESSAGES, MODEL, ChatFailed, chat_in_session, close_session, new_session
from ..context import Context, pool_spec, ready
from ..markdown import SUMMARY_HEADERS, ms, summary_row, table
from ..plots import figure, save
from ..stats import summary

PARAMS = {
    "quick": {"boot_seconds": 2, "target_idle": 3, "max_total": 6, "phase_s": 15, "noisy_threads": 8},
    "full": {"boot_seconds": 5, "target_idle": 4, "max_total": 8, "phase_s": 60, "noisy_threads": 8},
}
TOKENS = {"quiet": "quiet-token-0123456789", "noisy": "noisy-token-0123456789"}
FOLLOW_UP_EVERY_S = 1.0
NEW_SESSION_EVERY_S = 2.0
DEFAULTS = {"tenant_limits": TenantLimits().model_dump(), "chat_concurrency": 16}


def run(ctx: Context) -> dict:
    p = ctx.params(PARAMS)
    spec = pool_spec(p["boot_seconds"], target_idle=p["target_idle"], max_total=p["max_total"])
    with ctx.stack("tenants", spec, tokens=TOKENS, **DEFAULTS) as stack:
        ready(stack, spec)
        with stack.client("quiet") as client:
            conversation = new_session(client)["greenroom"]["session_id"]
        alone = quiet_phase(stack, conversation, p["phase_s"])
        noisy = Noisy(stack, p["noisy_threads"])
        with noisy:
            flooded = quiet_phase(stack, conversation, p["phase_s"])
    result = {"params": p, "alone": summarize(alone), "flooded": summarize(flooded),
              "noisy": noisy.outcomes(), "samples": {"alone": alone, "flooded": flooded}}
    result["plots"] = [plot(ctx, alone, flooded)]
    return result


def quiet_phase(stack, conversation: str, seconds: float) -> list[dict]:
    """The quiet tenant's traffic for `seconds`: (kind, started at, latency or None)."""
    samples: list[dict] = []
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=loop, args=(stack, session, every, until, samples))
               for session, every in ((conversation, FOLLOW_UP_EVERY_S), (None, NEW_SESSION_EVERY_S))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 300)
    return samples


def loop(stack, session: str | None, every: float, until: float, samples: list) -> None:
    """Follow-ups in `session`, or (None) short new sessions, one every `every` seconds."""
    kind = "follow_up" if session else "new_session"
    with stack.client("quiet", timeout=300) as client:
        while (now := time.monotonic()) < until:
            try:
                if session:
                    chat_in_session(client, session)
                else:
                    close_session(client, new_session(client, poll_s=300)["greenroom"]["session_id"])
                latency = time.monotonic() - now
            except (ChatFailed, httpx.HTTPError):
                latency = None
            samples.append({"kind": kind, "at": now, "latency_s": latency})
            time.sleep(max(0.0, now + every - time.monotonic()))


class Noisy:
    """Threads submitting new sessions as fast as the API answers, counting each answer."""

    def __init__(self, stack, threads: int):
        self.stack, self.answers = stack, Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._flood) for _ in range(threads)]

    def __enter__(self) -> "Noisy":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _flood(self) -> None:
        with self.stack.client("noisy", timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/v1/jobs", json={"model": MODEL, "messages": MESSAGES})
                except httpx.HTTPError:
                    self.answers["transport error"] += 1
                    continue
                error = response.json().get("error", {}) if response.status_code >= 400 else {}
                self.answers[f"{response.status_code} {error.get('limit', '')}".strip()] += 1

    def outcomes(self) -> dict:
        return dict(self.answers)


def summarize(samples: list[dict]) -> dict:
    out = {}
    for kind in ("follow_up", "new_session"):
        rows = [r for r in samples if r["kind"] == kind]
        out[kind] = summary([r["latency_s"] for r in rows if r["latency_s"] is not None])
        out[kind]["failed"] = sum(r["latency_s"] is None for r in rows)
    return out


def plot(ctx: Context, alone: list[dict], flooded: list[dict]) -> str:
    path = ctx.plot_path("tenants")
    fig, axes = figure(1, 2, width=11, height=3.6)
    for ax, kind in zip(axes, ("follow_up", "new_session")):
        for label, samples in (("alone", alone), ("noisy tenant flooding", flooded)):
            rows = [r for r in samples if r["kind"] == kind and r["latency_s"] is not None]
            start = min((r["at"] for r in rows), default=0)
            ax.plot([r["at"] - start for r in rows], [r["latency_s"] * 1000 for r in rows], ".", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("seconds into the phase")
        ax.set_ylabel(f"quiet tenant's {kind.replace('_', '-')} latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, path)
    return path.name


def markdown(result: dict) -> str:
    p = result["params"]
    rows = [summary_row(f"{kind.replace('_', ' ')}, {phase}", result[phase][kind])
            + [result[phase][kind]["failed"]]
            for kind in ("follow_up", "new_session") for phase in ("alone", "flooded")]
    noisy = ", ".join(f"{answer}: {count}" for answer, count in sorted(result["noisy"].items()))
    return "\n\n".join([
        f"Pool target_idle {p['target_idle']}, max_total {p['max_total']}, BOOT_SECONDS={p['boot_seconds']}; "
        f"default tenant limits and chat concurrency; {p['phase_s']} s per phase. The quiet tenant's "
        "latency in ms (failed: not served):",
        table([*SUMMARY_HEADERS, "failed"], rows),
        f"The noisy tenant's answers ({p['noisy_threads']} threads, as fast as answered): {noisy}.",
        f"Quiet follow-up p50 {ms(result['alone']['follow_up']['p50'])} ms alone, "
        f"{ms(result['flooded']['follow_up']['p50'])} ms flooded.",
    ])
