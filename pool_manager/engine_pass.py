"""An engine's own share of a pool's reconcile, asked for on its queue (engines.py): what
touches the engine (listing, health checks, adoption, reaping the dead, starting what was
placed on it, removing what left service), nothing pool-wide (no leases, no sizing)."""

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
