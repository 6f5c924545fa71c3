"""Every Redis key greenroom uses, built here and nowhere else.

    greenroom:<deployment>:
        pool:<pool>:warming|idle|assigned   sorted sets of container ids by state (scores: created
                                            at, ready at, lease expiry)
        pool:<pool>:waiting                 the pool's line of parked jobs (score: when each joined;
                                            per tenant: waiting:<tenant>, and waiting-tenants)
        pool:<pool>:stats|info|overrides    hashes: counters, what workers learnt (and when a
                                            reconcile last ran), run-time scale (and when set)
        pool:<pool>:arrivals                new sessions' first claims (sorted set: job id, score:
                                            when first seen), the arrival rate's window (sizing.py)
        pool:<pool>:sizing                  the last sizing decision and its inputs (hash)
        pool:<pool>:sizing-history          recent sizing figures, for the cooldown (sorted set)
        pool:<pool>:rollout                 rollouts asked for (hash: generation, requested_at)
        pool:<pool>:retiring                containers being removed (sorted set, score: since when)
        pool:<pool>:events                  recent boots and failed boots (stream, capped)
        pool:<pool>:placed:<engine>         containers placed on an engine, not yet started by its
                                            worker (sorted set of tokens, score: placed at; engines.py)
        engine:<engine>                     an engine's heartbeat: last listed, last error, lost at (hash)
        pool:<pool>:health                  degraded or whole, as the workers' log last told it
        c:<container>                       a container's record (hash)
        session:<tenant>/<id>               a session (hash: container, pool, state); ids are per tenant
        session-started:<id>                set once a session's first job is accepted
        job:<id>                            a job's record (hash)
        job-events:<id>                     a job's status changes (pub/sub channel)
        job-log:<id>                        a job's states and streamed chunks (stream; joblog.py)
        job-leases                          live deliveries' lease expiries (sorted set of job ids)
        lock:<name>, flag:<name>            locks (reconcile per pool, turn per session), re-run flags
        hist:<name>:<pool>                  a histogram's buckets, count and sum (hash)
        recent:<name>:<pool>:<slot>         the same for one short slot of time (hash, expires)
        ui-session:<digest>                 a pool page login: tenant, token digest (hash, expires)
        tenant:<tenant>:jobs                its jobs not yet final (sorted set, score: created at)
        tenant:<tenant>:sessions            its active sessions (set of session names)
        tenant:<tenant>:new-sessions        its jobs that start a session and have not claimed yet
        tenant:<tenant>:rate                its submissions in the current second (counter)
    greenroom:ports                         loopback ports handed out, host-wide (hash: port -> holder)
"""

PORTS = "greenroom:ports"  # not per deployment: ports are a host resource
POOL_STATES = ("warming", "idle", "assigned")


class Keys:
    def __init__(self, deployment: str):
        self.prefix = f"greenroom:{deployment}:"

    def pool(self, pool: str, part: str) -> str:
        """part: a state (warming, idle, assigned), waiting, stats, info, overrides,
        retiring, events, health (degraded or whole, as last logged), arrivals, sizing,
        sizing-history or rollout."""
        return f"{self.pools}{pool}:{part}"

    @property
    def pools(self) -> str:
        """The prefix of every pool's keys: pools + <pool> + ":" + part is pool(pool, part)."""
        return f"{self.prefix}pool:"

    def engine(self, engine: str) -> str:
        return f"{self.prefix}engine:{engine}"

    def container(self, container_id: str) -> str:
        return f"{self.prefix}c:{container_id}"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def session_started(self, session_id: str) -> str:
        return f"{self.prefix}session-started:{session_id}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def job_events(self, job_id: str) -> str:
        """A job's channel; job_events("") is the prefix every job's channel starts with."""
        return f"{self.prefix}job-events:{job_id}"

    def job_log(self, job_id: str) -> str:
        return f"{self.prefix}job-log:{job_id}"

    @property
    def job_leases(self) -> str:
        return f"{self.prefix}job-leases"

    def lock(self, name: str) -> str:
        return f"{self.prefix}lock:{name}"

    def flag(self, name: str) -> str:
        return f"{self.prefix}flag:{name}"

    def tenant(self, tenant: str, part: str = "") -> str:
        """part: jobs, sessions, new-sessions or rate; tenant("") is the prefix of them all."""
        return f"{self.prefix}tenant:{tenant}:{part}" if tenant else f"{self.prefix}tenant:"

    def histogram(self, name: str, pool: str) -> str:
        return f"{self.prefix}hist:{name}:{pool}"

    def recent(self, name: str, pool: str, slot: int) -> str:
        return f"{self.prefix}recent:{name}:{pool}:{slot}"

    def ui_session(self, digest: str) -> str:
        """A pool page login, by the SHA-256 digest of its cookie (the cookie itself is kept nowhere)."""
        return f"{self.prefix}ui-session:{digest}"
