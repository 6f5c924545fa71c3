"""The scenarios, one module each, imported when run. Each has PARAMS (quick and full),
run(ctx) -> a JSON-able dict (with "params" and "plots"), and markdown(result) -> text."""

import importlib

NAMES = ("overhead", "warm_vs_cold", "arrivals", "burst", "burst_engines", "refill", "scale", "tenants", "connections",
         "streaming", "waiting", "sizing")


def load(name: str):
    if name not in NAMES:
        raise ValueError(f"no scenario {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")
