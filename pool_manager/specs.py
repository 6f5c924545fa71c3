"""Each pool's spec: as configured (settings), and with its run-time scale applied (the
overrides `greenroom pool scale` and PATCH /v1/pools/<name> write, until dropped); the
hash of what its containers are made from (a rollout's old and new); and its idle target
with where that comes from (configured, set at run time, or computed: sizing.py)."""

import hashlib
import json
from datetime import datetime, timezone

from pydantic import ValidationError

from .errors import ConfigError, UnknownPool
from .schemas import AutoSizing, Target
from .settings import PoolSpec, Settings
from .sizing import Sizing
from .state import PoolState

SCALABLE = ("target_idle", "max_total", "min_idle", "max_idle")  # the only fields that change at run time
# Fields that say how the pool is run, not what its containers are: a change to any other
# (image, command, env, limits, ...) makes new containers of a new spec hash (a rollout).
POOL_FIELDS = frozenset({"target_idle", "max_total", "min_idle", "max_idle", "warm_goal", "arrival_window_s",
                         "scale_down_cooldown_s", "boot_timeout_s", "session_idle_ttl_s", "session_min_idle_s",
                         "recycle", "warm_share_goal"})


def spec_hash(spec: PoolSpec, generation: int = 0) -> str:
    """What a pool's containers are made from, and how many rollouts were asked for: 12
    hex digits (the containers' greenroom.spec-hash label)."""
    made_from = spec.model_dump(mode="json", exclude=set(POOL_FIELDS)) | {"rollout": generation}
    return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()[:12]


class PoolSpecs:
    def __init__(self, settings: Settings, state: PoolState):
        self.settings = settings
        self.state = state

    def configured(self, pool: str) -> PoolSpec:
        """As configured: right for everything but its scale (SCALABLE)."""
        try:
            return self.settings.pools[pool]
        except KeyError:
            raise UnknownPool(f"no pool named {pool!r}") from None

    def effective(self, pool: str) -> PoolSpec:
        """As configured, with the run-time overrides applied."""
        spec = self.configured(pool)
        return self._merged(spec, self.state.overrides(pool))

    @staticmethod
    def _merged(spec: PoolSpec, overrides: dict) -> PoolSpec:
        if not overrides:
            return spec
        merged = spec.model_dump() | overrides
        if merged["target_idle"] != "auto":
            merged["target_idle"] = min(merged["target_idle"], merged["max_total"])
        if merged["max_idle"] is not None:
            merged["max_idle"] = min(merged["max_idle"], merged["max_total"])
        merged["min_idle"] = min(merged["min_idle"], merged["max_total"],
                                 merged["max_idle"] if merged["max_idle"] is not None else merged["max_total"])
        return PoolSpec(**merged)

    def scale(self, pool: str, **values: int | str | None) -> PoolSpec:
        """Change the pool's scale at run time (target_idle a number or "auto"; None drops
        that field's override, back to the configuration); validated like the file."""
        unknown = set(values) - set(SCALABLE)
        if unknown:
            raise ConfigError(f"only {', '.join(SCALABLE)} can change at run time, not {', '.join(sorted(unknown))}")
        configured = self.configured(pool)
        kept = {k: v for k, v in self.state.overrides(pool).items() if values.get(k, v) is not None}
        try:
            PoolSpec(**configured.model_dump() | kept | {k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else next(iter(values))
            raise ConfigError(f"{field}: {first['msg'].removeprefix('Value error, ')}", field) from exc
        self.state.set_overrides(pool, values, {k: getattr(configured, k) for k in SCALABLE})
        return self.effective(pool)

    def reset(self, pool: str) -> PoolSpec:
        """Drop every run-time override: the configuration holds again."""
        self.configured(pool)
        return self.scale(pool, **{k: None for k in self.state.overrides(pool)})

    def spec_hash(self, pool: str) -> str:
        return spec_hash(self.configured(pool), self.state.rollout_generation(pool))

    def rollout(self, pool: str) -> str:
        """Replace the pool's containers with new ones of the same spec (an image rebuilt
        under the same tag, say), as a spec change would; returns the new spec hash. The
        next reconcile (the caller asks for one) starts it."""
        self.configured(pool)  # UnknownPool
        self.state.request_rollout(pool)
        return self.spec_hash(pool)

    def target(self, pool: str, sizing: Sizing | None) -> Target:
        """The idle target now and where it comes from; `sizing` is the last auto decision
        (Sizer.last), read by the caller."""
        configured, overrides = self.configured(pool), self.state.overrides(pool)
        effective = self._merged(configured, overrides)
        auto = effective.target_idle == "auto"
        idle = (sizing.idle if sizing else effective.min_idle) if auto else effective.target_idle
        source = "computed" if auto else ("override" if "target_idle" in overrides else "configured")
        meta = self.state.override_meta(pool) if overrides else {}
        return Target(idle=idle, max_total=effective.max_total, setting=effective.target_idle,
                      configured_idle=configured.target_idle, configured_max_total=configured.max_total,
                      source=source, why=self._why(pool, configured, effective, overrides, meta, sizing),
                      overrides=overrides or None,
                      override_set_at=float(meta["set_at"]) if meta.get("set_at") else None,
                      auto=_auto_view(sizing) if auto and sizing else None)

    def _why(self, pool, configured, effective, overrides, meta, sizing) -> str:
        parts = [_computed_why(effective, sizing) if effective.target_idle == "auto" else
                 f"target_idle {effective.target_idle}" + (" set at run time" if "target_idle" in overrides
                                                            else " as configured")]
        if not overrides and effective.target_idle != "auto":
            parts[0] = f"as configured (target_idle {configured.target_idle}, max_total {configured.max_total})"
        if overrides:
            parts.append(_override_why(pool, configured, overrides, meta))
        if effective.target_idle != "auto" and overrides.get("target_idle", -1) not in ("auto", -1) \
                and overrides["target_idle"] > effective.target_idle:
            parts.append(f"held to max_total {effective.max_total}")
        return "; ".join(parts)


def _auto_view(sizing: Sizing) -> AutoSizing:
    return AutoSizing(rate_per_s=sizing.rate_per_s, long_rate_per_s=sizing.long_rate_per_s,
                      short_rate_per_s=sizing.short_rate_per_s, short_counted=sizing.short_counted,
                      boot_s=sizing.boot_s, boots=sizing.boots, computed=sizing.computed, held=sizing.held,
                      warm_goal=sizing.warm_goal, min_idle=sizing.min_idle, max_idle=sizing.max_idle,
                      window_s=sizing.window_s, cooldown_s=sizing.cooldown_s, at=sizing.at)


def _computed_why(spec: PoolSpec, sizing: Sizing | None) -> str:
    if sizing is None:
        return f"auto: not computed yet (no reconcile pass since); min_idle {spec.min_idle} meanwhile"
    window = (f"{sizing.short_rate_per_s:.2f}/s over the last {sizing.window_s * 0.1:g} s (a step up)"
              if sizing.short_counted else f"{sizing.long_rate_per_s:.2f}/s over {sizing.window_s:g} s")
    boot = (f"boot p90 {sizing.boot_s:.1f} s of the last {sizing.boots} boots" if sizing.boots
            else f"boot time {sizing.boot_s:g} s assumed (no boot seen yet)")
    why = (f"auto: computed {sizing.computed} for a {sizing.warm_goal:.1%} warm goal from {window} new sessions "
           f"and {boot}")
    if sizing.held > sizing.computed:
        why += f"; {sizing.held} held for the {sizing.cooldown_s:g} s cooldown"
    if sizing.idle != sizing.held:
        why += f"; kept within min_idle {sizing.min_idle}..max_idle {sizing.max_idle}"
    return why


def _override_why(pool: str, configured: PoolSpec, overrides: dict, meta: dict) -> str:
    """Which settings were set at run time, over what, and how to drop them."""
    when = datetime.fromtimestamp(float(meta["set_at"]), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") \
        if meta.get("set_at") else "?"
    given = ", ".join(f"{field} {value}" for field, value in overrides.items())
    was = ", ".join(f"{field} {getattr(configured, field)}" for field in dict.fromkeys(("target_idle", "max_total",
                                                                                       *overrides)))
    changed = [f"{field} {meta[f'configured.{field}']}" for field in overrides
               if meta.get(f"configured.{field}") not in (None, str(getattr(configured, field)))]
    why = f"set at run time at {when} (greenroom pool scale, PATCH /v1/pools/{pool}): {given}; configured: {was}"
    if changed:
        why += f" (when it was set the configuration said {', '.join(changed)}: the override still wins)"
    return why + f"; `greenroom pool scale {pool} --reset` drops it"
