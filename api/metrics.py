"""GET /metrics: Prometheus text, read from Redis at scrape time, so it is the same
whichever API process answers and includes what the workers recorded.

Without Redis there are no figures to read: the answer is then greenroom_redis_up 0
alone, at once (one try, one second), so that Prometheus tells a Redis outage (that
gauge) from an API outage (`up` 0). deploy/prometheus/ has the alert rules on these."""

import math
import time

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from redis import Redis, RedisError

from pool_manager.keys import POOL_STATES
from pool_manager.settings import SEND_TASK_TENANT
from pool_manager.metrics import HISTOGRAMS
from workers.names import CHAT_QUEUE, POOL_QUEUE

from .health import _redis_ok
from .services import Services, services

bp = Blueprint("metrics", __name__)

# stats counter -> (metric, help, labels)
COUNTERS = {
    "claims": ("greenroom_claims", "New sessions that claimed a container, by whether it was warm or waited for",
               {"claims_warm": "warm", "claims_waited": "waited"}, "served"),
    "jobs": ("greenroom_jobs", "Chat jobs finished, by outcome",
             {"jobs_succeeded": "succeeded", "jobs_failed": "failed", "jobs_cancelled": "cancelled"}, "outcome"),
    "booted": ("greenroom_boots", "Containers that became healthy", {"booted": None}, None),
    "failed": ("greenroom_boot_failures", "Containers destroyed for never becoming healthy", {"failed": None}, None),
    "model_failures": ("greenroom_model_failures", "Chat replies a model server answered with a 5xx",
                       {"model_failures": None}, None),
}


class PoolCollector:
    def __init__(self, svc: Services, broker: Redis | None):
        self.svc, self.broker = svc, broker

    def collect(self):
        overview = self.svc.pools
        statuses = {pool: overview.status(pool) for pool in overview.pools}
        yield self._containers(statuses)
        yield from self._engines(statuses)
        yield self._gauge("greenroom_waiting_jobs", "Jobs waiting for a container",
                          {p: overview.waiting(p) for p in statuses})
        yield self._gauge("greenroom_target_idle", "Idle containers the pool keeps now: its target_idle, or what "
                          "the sizing computed for an auto pool", {p: s.target_idle for p, s in statuses.items()})
        yield self._gauge("greenroom_pool_degraded", "1 while the pool's recent boots all failed (backing off)",
                          {p: int(s.degraded) for p, s in statuses.items()})
        yield from self._pool_gauges(statuses)
        yield from self._sizing(statuses)
        yield from self._tenant_gauges(list(statuses))
        pools = list(statuses)
        yield from self._counters(pools)
        yield from self._histograms(pools)
        if self.broker is not None:
            depth = GaugeMetricFamily("greenroom_queue_depth", "Messages waiting in a Celery queue", labels=["queue"])
            for queue in (CHAT_QUEUE, POOL_QUEUE):
                depth.add_metric([queue], self.broker.llen(queue))
            yield depth

    def _pool_gauges(self, statuses):
        overview, now = self.svc.pools, time.time()
        yield self._gauge("greenroom_max_total", "Most containers the pool may have at once",
                          {p: s.max_total for p, s in statuses.items()})
        yield self._gauge("greenroom_warm_share_goal_ratio", "The share of new sessions that should find a "
                          "container idle (the pool's warm_share_goal)",
                          {p: overview.settings.pools[p].warm_share_goal for p in statuses})
        yield self._gauge("greenroom_last_reconcile_timestamp_seconds", "When the pool's last reconcile pass ended, "
                          "in Unix time (0: never); the maintenance worker's heartbeat",
                          {p: overview.reconciled_at(p) or 0 for p in statuses})
        lines = {p: overview.line(p) for p in statuses}
        yield self._gauge("greenroom_oldest_waiting_job_seconds", "How long the pool's longest-waiting job has "
                          "waited for a container (0: none waits)",
                          {p: max((now - joined for _, _, joined in line), default=0) for p, line in lines.items()})
        family = GaugeMetricFamily("greenroom_tenant_waiting_jobs", "Jobs waiting for a container, by tenant",
                                   labels=["pool", "tenant"])
        for pool, line in lines.items():
            for tenant in sorted({tenant for _, tenant, _ in line} | self._tenants()):
                family.add_metric([pool, tenant], sum(1 for _, t, _ in line if t == tenant))
        yield family

    def _sizing(self, statuses):
        """The idle cost, the sizing's inputs, and the containers a rollout has yet to replace."""
        overview = self.svc.pools
        idle = CounterMetricFamily("greenroom_idle_container_seconds", "Time containers spent idle, summed: the "
                                   "pool's idle cost (its rate: the average number idle)", labels=["pool"])
        for pool, status in statuses.items():
            idle.add_metric([pool], status.idle_container_seconds)
        yield idle
        inputs = {pool: overview.sizing_inputs(pool) for pool in statuses}
        yield self._gauge("greenroom_sizing_arrival_rate_per_second", "New sessions per second, as the sizing "
                          "estimates them (an auto pool: the rate its target was computed from)",
                          {p: rate for p, (rate, _) in inputs.items()})
        yield self._gauge("greenroom_sizing_boot_seconds", "The boot time the sizing takes: the 90th percentile "
                          "of the pool's latest boots", {p: boot for p, (_, boot) in inputs.items()})
        family = GaugeMetricFamily("greenroom_outdated_containers", "Containers of an older spec than new ones "
                                   "are made from: a rollout's work left", labels=["pool", "state"])
        for pool, status in statuses.items():
            for state in POOL_STATES:
                family.add_metric([pool, state], getattr(status.old, state))
        yield family

    def _tenant_gauges(self, pools):
        loads = {tenant: self.svc.pools.tenant_load(tenant) for tenant in sorted(self._tenants())}
        for name, field, help_text in (("greenroom_tenant_sessions", "sessions", "Active sessions, by tenant"),
                                       ("greenroom_tenant_jobs_in_flight", "jobs_in_flight",
                                        "Jobs submitted and not yet finished, by tenant")):
            family = GaugeMetricFamily(name, help_text, labels=["tenant"])
            for tenant, load in loads.items():
                family.add_metric([tenant], load[field])
            yield family

    def _tenants(self) -> set[str]:
        """The configured tenants and send_task's: a bounded set of label values."""
        return {*self.svc.settings.api_keys, SEND_TASK_TENANT}

    @staticmethod
    def _containers(statuses):
        family = GaugeMetricFamily("greenroom_containers", "Containers by state", labels=["pool", "state"])
        for pool, status in statuses.items():
            for state in POOL_STATES:
                family.add_metric([pool, state], getattr(status, state))
        return family

    @staticmethod
    def _engines(statuses):
        """The same per Docker engine (engines.py), and whether each engine is healthy."""
        containers = GaugeMetricFamily("greenroom_engine_containers", "Containers by engine and state",
                                       labels=["pool", "engine", "state"])
        healthy = GaugeMetricFamily("greenroom_engine_healthy", "1 while the engine's worker lists it",
                                    labels=["pool", "engine"])
        for pool, status in statuses.items():
            for engine in status.engines:
                for state in POOL_STATES:
                    containers.add_metric([pool, engine.name, state], getattr(engine, state))
                healthy.add_metric([pool, engine.name], int(engine.healthy))
        yield containers
        yield healthy

    @staticmethod
    def _gauge(name, help_text, values: dict):
        family = GaugeMetricFamily(name, help_text, labels=["pool"])
        for pool, value in values.items():
            family.add_metric([pool], value)
        return family

    def _counters(self, pools):
        stats = {pool: self.svc.pools.stats(pool) for pool in pools}
        for name, help_text, fields, label in COUNTERS.values():
            family = CounterMetricFamily(name, help_text, labels=["pool"] + ([label] if label else []))
            for pool in pools:
                for field, value in fields.items():
                    family.add_metric([pool] + ([value] if value else []), stats[pool].get(field, 0))
            yield family

    def _histograms(self, pools):
        for name, (help_text, _) in HISTOGRAMS.items():
            family = HistogramMetricFamily(f"greenroom_{name}", help_text, labels=["pool"])
            for pool in pools:
                buckets, total, _ = self.svc.pools.histogram(name, pool)
                family.add_metric([pool], [("+Inf" if math.isinf(b) else repr(float(b)), n) for b, n in buckets],
                                  sum_value=total)
            yield family


class RedisUp:
    def __init__(self, up: bool):
        self.up = up

    def collect(self):
        yield GaugeMetricFamily("greenroom_redis_up", "1 when the API reached Redis for this scrape, else 0 (and "
                                "no other greenroom figure is given)", value=int(self.up))


@bp.get("/metrics")
def metrics():
    svc = services()
    text = _exposition(RedisUp(True), PoolCollector(svc, svc.broker_redis)) if _redis_ok(svc) else None
    return Response(text or _exposition(RedisUp(False)), content_type=CONTENT_TYPE_LATEST)


def _exposition(*collectors) -> bytes | None:
    """The collectors' text; None if Redis failed meanwhile (past the client's retries)."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    try:
        return generate_latest(registry)
    except RedisError:
        return None
