"""greenroom's Grafana dashboard, built with Grafana's own SDK (grafana-foundation-sdk).

    python deploy/grafana/dashboard.py > deploy/grafana/greenroom.json

greenroom.json is this script's output, committed; tests/test_prometheus.py checks that
it is, and runs every panel's query against a real Prometheus scraping greenroom.

Every API process reports the same figures (read from Redis), so series are combined
across scraped instances with max, never summed. $pool picks pools; $datasource the
Prometheus.
"""

import sys

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement, StackingMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

UID = "greenroom-pools"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
POOL = 'pool=~"$pool"'
RATE = "$__rate_interval"


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def series(title: str, description: str, unit: str, *queries: tuple[str, str], stacked: bool = False,
           span: int = 12, max_val: float | None = None) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
             .span(span).height(8).min(0)
             .legend(common.VizLegendOptions().display_mode(LegendDisplayMode.LIST)
                     .placement(LegendPlacement.BOTTOM).show_legend(True)))
    if max_val is not None:
        panel = panel.max(max_val)
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(60)
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(query(expr, legend, chr(ord("A") + index)))
    return panel


def single(title: str, description: str, unit: str, expr: str, legend: str) -> stat.Panel:
    return (stat.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
            .span(6).height(4).with_target(query(expr, legend)))


def quantiles(metric: str, extra: str = "") -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, max by (pool, le) (rate({metric}_bucket{{{POOL}{extra}}}[{RATE}])))",
             f"{{{{pool}}}} p{round(q * 100)}") for q in (0.5, 0.95, 0.99)]


def health_row() -> list:
    return [
        single("Redis reachable", "1 while the API reaches Redis (greenroom_redis_up); alert: "
               "GreenroomRedisUnreachable", "none", "max(greenroom_redis_up)", "redis"),
        single("Pools degraded", "Pools whose boots all fail or whose runtime does not answer; alert: "
               "GreenroomPoolDegraded", "none", f"sum(max by (pool) (greenroom_pool_degraded{{{POOL}}}))", "degraded"),
        single("Since the last reconcile", "Seconds since a maintenance worker last reconciled each pool; alert: "
               "GreenroomNoMaintenanceWorker (over 60 s)", "s",
               f"time() - max by (pool) (greenroom_last_reconcile_timestamp_seconds{{{POOL}}})", "{{pool}}"),
        single("Longest wait in line", "The oldest waiting job's wait; alert: GreenroomJobsWaitingTooLong", "s",
               f"max by (pool) (greenroom_oldest_waiting_job_seconds{{{POOL}}})", "{{pool}}"),
    ]


def pool_panels() -> list:
    return [
        series("Containers by state", "Warming, idle and assigned containers per pool, with the pool's idle "
               "target and max_total", "short",
               (f"max by (pool, state) (greenroom_containers{{{POOL}}})", "{{pool}} {{state}}"),
               (f"max by (pool) (greenroom_target_idle{{{POOL}}})", "{{pool}} target idle"),
               (f"max by (pool) (greenroom_max_total{{{POOL}}})", "{{pool}} max total"), span=12),
        series("Warm share", "New sessions that found a container idle, against the pool's goal; alert: "
               "GreenroomWarmShareLow", "percentunit",
               (f'max by (pool) (rate(greenroom_claims_total{{{POOL}, served="warm"}}[{RATE}])) / '
                f"(sum by (pool) (max by (pool, served) (rate(greenroom_claims_total{{{POOL}}}[{RATE}]))) > 0)",
                "{{pool}} warm share"),
               (f"max by (pool) (greenroom_warm_share_goal_ratio{{{POOL}}})", "{{pool}} goal"), span=12, max_val=1),
        series("Idle cost", "Containers idle on average (the rate of idle container-seconds), against the "
               "target in effect (auto: computed) and claims per second, warm or waited: weigh idle cost against "
               "warm share", "short",
               (f"max by (pool) (rate(greenroom_idle_container_seconds_total{{{POOL}}}[{RATE}]))",
                "{{pool}} idle containers (average)"),
               (f"max by (pool) (greenroom_target_idle{{{POOL}}})", "{{pool}} target idle"),
               (f"max by (pool, served) (rate(greenroom_claims_total{{{POOL}}}[{RATE}]))",
                "{{pool}} claims/s {{served}}"),
               span=12),
        series("Sizing inputs", "What an auto target is computed from: new sessions per second and the boot "
               "time's p90 (sizing.py); and containers of an older spec a rollout has yet to replace", "short",
               (f"max by (pool) (greenroom_sizing_arrival_rate_per_second{{{POOL}}})", "{{pool}} arrivals/s"),
               (f"max by (pool) (greenroom_sizing_boot_seconds{{{POOL}}})", "{{pool}} boot p90 (s)"),
               (f"sum by (pool) (max by (pool, state) (greenroom_outdated_containers{{{POOL}}}))",
                "{{pool}} old-spec containers"), span=12),
        series("Claim wait", "How long new sessions waited for a container: p50, p95, p99 (bucket bounds)", "s",
               *quantiles("greenroom_claim_wait_seconds"), span=12),
        series("Job latency", "From a job's submission to its end: p50, p95, p99", "s",
               *quantiles("greenroom_job_latency_seconds"), span=12),
        series("Boots and failures", "Per minute: containers that became healthy, boots that failed (never "
               "healthy, or crashed), replies a model answered with a 5xx", "short",
               (f"60 * max by (pool) (rate(greenroom_boots_total{{{POOL}}}[{RATE}]))", "{{pool}} boots"),
               (f"60 * max by (pool) (rate(greenroom_boot_failures_total{{{POOL}}}[{RATE}]))", "{{pool}} failed boots"),
               (f"60 * max by (pool) (rate(greenroom_model_failures_total{{{POOL}}}[{RATE}]))",
                "{{pool}} model 5xx"), span=12),
        series("Boot time", "From create to the first healthy answer: p50, p95, p99", "s",
               *quantiles("greenroom_boot_seconds"), span=12),
        series("Waiting and queued", "Jobs in a pool's line waiting for a container, and messages in the Celery "
               "queues not yet taken by a worker", "short",
               (f"max by (pool) (greenroom_waiting_jobs{{{POOL}}})", "{{pool}} waiting for a container"),
               ("max by (queue) (greenroom_queue_depth)", "queue {{queue}}"), span=12),
        series("Jobs finished", "Per second, by outcome", "reqps",
               (f"max by (pool, outcome) (rate(greenroom_jobs_total{{{POOL}}}[{RATE}]))", "{{pool}} {{outcome}}"),
               span=12),
        series("Reconcile pass", "One reconcile pass over one pool: p50, p95, p99", "s",
               *quantiles("greenroom_reconcile_duration_seconds"), span=12),
    ]


def tenant_panels() -> list:
    return [
        series("Sessions by tenant", "Active sessions each tenant holds (tenant_limits.sessions bounds it)",
               "short", ("max by (tenant) (greenroom_tenant_sessions)", "{{tenant}}"), span=8),
        series("Jobs in flight by tenant", "Jobs submitted and not yet finished (tenant_limits.jobs_in_flight)",
               "short", ("max by (tenant) (greenroom_tenant_jobs_in_flight)", "{{tenant}}"), span=8),
        series("Waiting by tenant", "Each tenant's jobs in the pools' lines (served round robin between tenants)",
               "short", (f"max by (pool, tenant) (greenroom_tenant_waiting_jobs{{{POOL}}})", "{{pool}} {{tenant}}"),
               span=8, stacked=True),
    ]


def build() -> dashboard.Dashboard:
    board = (dashboard.Dashboard("greenroom pools").uid(UID).tags(["greenroom"]).refresh("10s")
             .time("now-1h", "now").timezone("browser")
             .description("Warm pools of model servers: containers, warm share, waits, boots, tenants")
             .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
             .with_variable(dashboard.QueryVariable("pool").label("Pool").datasource(DATASOURCE)
                            .query("label_values(greenroom_containers, pool)")
                            .refresh(VariableRefresh.ON_DASHBOARD_LOAD).multi(True).include_all(True)))
    board = board.with_row(dashboard.Row("Health"))
    for panel in health_row():
        board = board.with_panel(panel)
    board = board.with_row(dashboard.Row("Pools"))
    for panel in pool_panels():
        board = board.with_panel(panel)
    board = board.with_row(dashboard.Row("Tenants"))
    for panel in tenant_panels():
        board = board.with_panel(panel)
    return board


def render() -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
