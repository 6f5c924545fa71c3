"""Each pool's spec: as configured (settings), and with its run-time scale applied (the
overrides `greenroom pool scale` and PATCH /v1/pools/<name> write)."""

from pydantic import ValidationError

from .errors import ConfigError, UnknownPool
from .settings import PoolSpec, Settings
from .state import PoolState

SCALABLE = ("target_idle", "max_total")  # the only fields that change at run time


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
        overrides = self.state.overrides(pool)
        if not overrides:
            return spec
        merged = spec.model_dump() | overrides
        merged["target_idle"] = min(merged["target_idle"], merged["max_total"])
        return PoolSpec(**merged)

    def scale(self, pool: str, **values: int) -> PoolSpec:
        """Change target_idle and/or max_total at run time; validated like the file."""
        unknown = set(values) - set(SCALABLE)
        if unknown:
            raise ConfigError(f"only {', '.join(SCALABLE)} can change at run time, not {', '.join(sorted(unknown))}")
        try:
            PoolSpec(**self.effective(pool).model_dump() | values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or next(iter(values))
            raise ConfigError(f"{field}: {first['msg'].removeprefix('Value error, ')}", field) from exc
        self.state.set_overrides(pool, values)
        return self.effective(pool)
