"""GET /metrics: Prometheus text, read from Redis at scrape time, so it is the same
whichever API process answers and includes what the workers recorded."""

import math

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from redis import Redis

from pool_manager.keys import POOL_STATES
from pool_manager.metrics import HISTOGRAMS
from workers.names import CHAT_QUEUE, POOL_QUEUE

from .services import Services, services

bp = Blueprint("metrics", __name__)

# stats counter -> (metric, help, labels)
COUNTERS = {
    "claims": ("greenroom_claims", "New sessions that claimed a container, by whether it was warm or waited for",
               {"claims_warm": "warm", "claims_waited": "waited"}, "served"),
    "jobs": ("greenroom_jobs", "Chat jobs finished, by outcome",
             {"jobs_succeeded": "succeeded", "jobs_failed": "failed"}, "outcome"),
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
        yield self._gauge("greenroom_waiting_jobs", "Jobs waiting for a container",
                          {p: overview.waiting(p) for p in statuses})
        yield self._gauge("greenroom_target_idle", "Idle containers the pool keeps",
                          {p: s.target_idle for p, s in statuses.items()})
        yield self._gauge("greenroom_pool_degraded", "1 while the pool's recent boots all failed (backing off)",
                          {p: int(s.degraded) for p, s in statuses.items()})
        pools = list(statuses)
        yield from self._counters(pools)
        yield from self._histograms(pools)
        if self.broker is not None:
            depth = GaugeMetricFamily("greenroom_queue_depth", "Messages waiting in a Celery queue", labels=["queue"])
            for queue in (CHAT_QUEUE, POOL_QUEUE):
                depth.add_metric([queue], self.broker.llen(queue))
            yield depth

    @staticmethod
    def _containers(statuses):
        family = GaugeMetricFamily("greenroom_containers", "Containers by state", labels=["pool", "state"])
        for pool, status in statuses.items():
            for state in POOL_STATES:
                family.add_metric([pool, state], getattr(status, state))
        return family

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


@bp.get("/metrics")
def metrics():
    svc = services()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(svc, svc.broker_redis))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
