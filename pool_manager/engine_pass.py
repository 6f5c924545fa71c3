"""The two halves of a pool's reconcile with several engines (engines.py).

EnginePass: an engine's own share, asked for on its queue: what touches the engine
(listing, health checks, adoption, reaping the dead, starting what was placed on it,
removing what left service), nothing pool-wide (no leases, no sizing).
PoolWidePass: the pool-wide share alone, from Redis, for a pass that landed on a worker
whose own engine does not answer: leases, sizing and placement on the other engines."""

import time

from .reconcile import ReconcilePass, ReconcileReport


class EnginePass(ReconcilePass):
    def run(self) -> ReconcileReport:
        began = time.monotonic()
        live = {i.id: i for i in self.runtime.list_managed() if i.pool == self.pool}
        known = self.state.containers(self.pool)
        here = {i: c for i, c in known.items() if c.engine == self.runtime.engine}
        self.forget_vanished(here, live)
        self.adopt_unknown(known, live)
        self.check_warming(here, live)
        self.engine_work(live)
        self.show_states(live)
        self.report.duration_s = time.monotonic() - began
        return self.report


class PoolWidePass(ReconcilePass):
    lists_here = False  # this engine failed: nothing is placed on it

    def run(self) -> ReconcileReport:
        began = time.monotonic()
        self.reap_expired_leases()
        self.resize(0)
        self.report.duration_s = time.monotonic() - began
        return self.report
