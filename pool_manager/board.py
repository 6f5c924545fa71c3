"""What the pool page (GET /ui and /ui/state) shows of each pool: every container as a
tile, the waiting line in its fair order, the target and where it comes from, claims of
the last minutes, the latest boots and failures. From Redis alone, with no writes (as
overview.py).

Fields that have one value today are built to take more later: a container's `engine`
is its record's, else "local"; a target's `source` and `why` say where it comes from.
"""

import time

from redis import Redis

from .keys import POOL_STATES
from .metrics import SLOT_S, Metrics, quantile
from .overview import PoolOverview
from .schemas import Board, LineEntry, PoolBoard, PoolEvent, Slot, Target, Tile, TileCounts
from .settings import Settings
from .specs import PoolSpecs
from .state import PoolState

MAX_TILES = 400  # per pool; more are counted, not shown
MAX_LINE = 100  # the first in line shown
EVENTS = 20
CHART_S = 600  # the charts' span
ENGINE = "local"  # until records name their engine (multi-host)
TILE_STATES = (*POOL_STATES, "retiring")


class PoolBoards:
    def __init__(self, settings: Settings, redis: Redis):
        self.overview = PoolOverview(settings, redis)
        self.state = PoolState(redis, settings.deployment)
        self.specs = PoolSpecs(settings, self.state)
        self.metrics = Metrics(redis, settings.deployment)

    def board(self, tenant: str) -> Board:
        now = time.time()
        return Board(now=now, tenant=tenant, pools=[self.pool(name, now) for name in self.overview.pools])

    def pool(self, name: str, now: float) -> PoolBoard:
        """Raises UnknownPool."""
        status = self.overview.status(name)
        ids = self._ids(name)
        tiles = self._tiles(ids, now, status.spec_hash)
        line = self.overview.line(name)
        return PoolBoard(
            name=name, runtime=status.runtime, degraded=status.degraded, runtime_error=status.runtime_error,
            target=status.target, counts=TileCounts(**{state: len(ids[state]) for state in TILE_STATES}),
            tiles=tiles[:MAX_TILES], tiles_omitted=max(0, len(tiles) - MAX_TILES),
            line=[LineEntry(position=i, job_id=job, tenant=tenant, waited_s=max(0.0, now - joined))
                  for i, (job, tenant, joined) in enumerate(line[:MAX_LINE], 1)],
            waiting=len(line), warm_share_goal=self.specs.configured(name).warm_share_goal, slot_s=SLOT_S,
            slots=self.slots(name), events=self.events(name), reconciled_at=self.overview.reconciled_at(name))

    def target(self, name: str) -> Target:
        return self.overview.target(name)

    def slots(self, name: str) -> list[Slot]:
        """Claims per slot. A claim that found a container idle waited 0 s, so it falls in
        the first bucket (up to 1 ms); one that waited polled first and waited longer."""
        return [Slot(start=start, claims=count, warm=buckets[0][1], wait_p50_s=quantile(buckets, 0.5),
                     wait_p95_s=quantile(buckets, 0.95))
                for start, buckets, count in self.metrics.recent("claim_wait_seconds", name, CHART_S)]

    def events(self, name: str) -> list[PoolEvent]:
        return [PoolEvent(at=float(e["at"]), kind=e["kind"], container=e["container"], seconds=float(e["seconds"]))
                for e in self.metrics.events(name, EVENTS)]

    def _ids(self, name: str) -> dict[str, list[tuple[str, float]]]:
        """Each state's container ids with their scores (retiring: since when)."""
        with self.state.redis.pipeline(transaction=False) as pipe:
            for state in TILE_STATES:
                pipe.zrange(self.state.keys.pool(name, state), 0, -1, withscores=True)
            return dict(zip(TILE_STATES, pipe.execute(), strict=True))

    def _tiles(self, ids: dict[str, list[tuple[str, float]]], now: float, spec_hash: str) -> list[Tile]:
        """In the order they were created, so that a tile keeps its place as its state changes."""
        wanted = [(state, cid, score) for state in TILE_STATES for cid, score in ids[state]]
        with self.state.redis.pipeline(transaction=False) as pipe:
            for _, container_id, _ in wanted:
                pipe.hgetall(self.state.keys.container(container_id))
            records = pipe.execute()
        tiles = [_tile(state, cid, score, record, now, spec_hash)
                 for (state, cid, score), record in zip(wanted, records, strict=True) if record]  # else gone meanwhile
        return [tile for _, tile in sorted(tiles, key=lambda pair: pair[0])]


def _tile(state: str, container_id: str, score: float, record: dict[str, str], now: float,
          spec_hash: str) -> tuple[float, Tile]:
    """(created at, the tile). Since when it is in its state: warming since created, idle
    since its score (ready at), assigned since claimed, retiring since its score."""
    created = float(record.get("created_at") or now)
    since = {"warming": created, "assigned": float(record.get("assigned_at") or created)}.get(state, score)
    return created, Tile(id=container_id, state=state, old=record.get("spec_hash", "") != spec_hash,
                         engine=record.get("engine") or ENGINE,
                         age_s=max(0.0, now - created), in_state_s=max(0.0, now - since),
                         session=record.get("session") or None)
