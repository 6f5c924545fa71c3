"""Settings, read once, from GREENROOM_* environment variables and an optional TOML file.

The TOML file is named by GREENROOM_CONFIG; environment variables win over it. Every
value is validated here, so a wrong spec fails at start-up with the field it concerns.
"""

import logging
import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from .errors import ConfigError

REFERENCE_SERVER = Path(__file__).resolve().parents[1] / "images" / "chatbot" / "server.py"
NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# A kubernetes pool's name goes into pod names (gr-<pool>-<12 hex>, at most 63 characters)
KUBE_POOL = r"^[a-z0-9]([a-z0-9-]{0,45}[a-z0-9])?$"
LABEL_VALUE = r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$"
SEND_TASK_TENANT = "celery"  # the owner of jobs sent with send_task: reserved, no API key may claim it
DEFAULT_ENGINE = "local"  # the one engine of a single machine, unless [engines.<name>] say otherwise
log = logging.getLogger(__name__)


class TenantLimits(BaseModel):
    """What one tenant may hold at once; over a limit, a submission gets 429 (a send_task
    job fails) with the limit named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sessions: int = Field(8, ge=1)  # active, or whose first job is on its way to a container
    jobs_in_flight: int = Field(32, ge=1)  # submitted and not yet final
    submissions_per_second: int = Field(20, ge=1)


class PoolSpec(BaseModel):
    """One pool: what to boot, how many to keep waiting, and how to fence it in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = None
    command: list[str] | None = None
    runtime: Literal["auto", "docker", "process", "kubernetes"] = "auto"
    # Booted containers kept waiting: a number, or "auto" (sizing.py): the smallest count
    # that the arrivals of one boot time exceed with probability at most 1 - warm_goal,
    # from the observed arrival rate and boot time, within min_idle..max_idle.
    target_idle: Annotated[int, Field(ge=0)] | Literal["auto"] = 2
    max_total: int = Field(20, ge=1, le=10_000)
    min_idle: int = Field(1, ge=0)  # auto: never fewer (0: a quiet pool drains to nothing)
    max_idle: int | None = Field(None, ge=0)  # auto: never more (unset: max_total)
    warm_goal: float = Field(0.99, gt=0, lt=1)  # auto: the share of new sessions to find one idle
    arrival_window_s: float = Field(60, ge=10, le=3600)  # auto: the arrival rate's window
    scale_down_cooldown_s: float = Field(60, ge=0, le=3600)  # auto: a lower target waits this long
    health_path: str = Field("/healthz", pattern=r"^/")
    boot_timeout_s: float = Field(120, gt=0)
    session_idle_ttl_s: float = Field(300, gt=0)
    # At max_total with jobs waiting, sessions idle this long are closed, least recently used
    # first, to free their containers (their next message answers session_closed, saying why).
    session_min_idle_s: float = Field(30, ge=0)
    recycle: bool = False
    # The share of new sessions that should find a container idle; below it for a while,
    # deploy/prometheus's GreenroomWarmShareLow alert fires (the pool page draws it too).
    warm_share_goal: float = Field(0.95, ge=0, le=1)
    env: dict[str, str] = {}
    port: int = Field(8000, ge=1, le=65535)
    network: str = "host"
    # Each container gets a bearer key of its own in this variable (vLLM reads VLLM_API_KEY);
    # relays send it, so containers sharing a network cannot use each other.
    container_key_env: str = Field("API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    mem_limit: str = Field("1g", pattern=r"^\d+[bkmg]?$")
    cpus: float = Field(1.0, gt=0)
    pids_limit: int = Field(256, ge=1)
    nofile: int = Field(4096, ge=64)  # open files per container
    log_max_size: str = Field("10m", pattern=r"^\d+[kmg]$")  # docker's json-file log, kept in 3 files of this
    user: str = "10001:10001"
    tmpfs: dict[str, str] = {"/tmp": "rw,noexec,nosuid,size=64m"}

    @model_validator(mode="after")
    def _consistent(self) -> "PoolSpec":
        if self.target_idle != "auto" and self.target_idle > self.max_total:
            raise ValueError(f"target_idle ({self.target_idle}) exceeds max_total ({self.max_total})")
        if self.min_idle > min(self.max_total, self.max_idle if self.max_idle is not None else self.max_total):
            raise ValueError(f"min_idle ({self.min_idle}) exceeds max_idle or max_total")
        if self.runtime in ("docker", "kubernetes") and not self.image:
            raise ValueError(f"runtime '{self.runtime}' needs an image")
        if self.runtime == "kubernetes" and not re.fullmatch(r"\d+(:\d+)?", self.user):
            raise ValueError("runtime 'kubernetes' needs a numeric user, uid[:gid]")
        if self.runtime == "process" and not self.command:
            raise ValueError("runtime 'process' needs a command")
        if not (self.image or self.command):
            raise ValueError("a pool needs an image or a command")
        return self


class EngineSpec(BaseModel):
    """One Docker engine (engines.py): driven by the pool worker on its own host
    (`greenroom worker --queue pool --engine <name>`), the only process that talks to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    docker_host: str | None = None  # as its worker reaches it; None: DOCKER_HOST, then the local socket
    address: str = "127.0.0.1"  # where its containers listen and other hosts reach them (host networking)
    port_range: tuple[int, int] | None = None  # None: the settings' port_range
    capacity: int = Field(10_000, ge=1)  # containers at most, of every pool

    @field_validator("port_range")
    @classmethod
    def _ports(cls, ports: tuple[int, int] | None) -> tuple[int, int] | None:
        if ports is not None and not 1024 <= ports[0] < ports[1] <= 65535:
            raise ValueError("port_range must be two ports, low < high, within 1024-65535")
        return ports


def reference_pool(**overrides) -> PoolSpec:
    """The reference chatbot, runnable by either runtime."""
    spec = {
        "image": "greenroom/chatbot:latest",
        "command": [sys.executable, str(REFERENCE_SERVER)],
        "env": {"BOOT_SECONDS": "5"},
    }
    return PoolSpec(**(spec | overrides))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GREENROOM_", extra="forbid", frozen=True)

    deployment: str = Field("greenroom", pattern=NAME)  # the owner label of every container
    state_dir: Path | None = None  # local state (process servers' records, beat's schedule); statedir.py
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None  # defaults to redis_url
    docker_host: str | None = None  # defaults to DOCKER_HOST, then the local socket
    # Kubernetes pools: their pods' namespace, and a kubeconfig file (unset: the pod's
    # service account when greenroom runs in a cluster, else $KUBECONFIG or ~/.kube/config)
    kubernetes_namespace: str = Field("default", pattern=DNS_LABEL)
    kubeconfig: str | None = None
    port_range: tuple[int, int] = (20000, 29999)
    # Docker engines, one worker each (engines.py); none: one, DEFAULT_ENGINE, from docker_host and port_range
    engines: dict[str, EngineSpec] = {}
    engine: str | None = None  # the engine this process drives (`greenroom worker --engine`); see own_engine
    engine_grace_s: float = Field(30, gt=0)  # an engine silent this long: its containers are declared lost
    reconcile_interval_s: float = Field(5.0, gt=0)  # beat's safety-net pass
    boot_backoff_s: tuple[float, float] = (1.0, 60.0)  # pause after a failed boot: first, longest
    claim_timeout_s: float = Field(300, gt=0)  # how long a job waits for a container
    chat_timeout_s: float = Field(120, gt=0)  # how long a container may take to reply, all of it
    max_reply_bytes: int = Field(8 * 2**20, ge=1024)  # a longer reply fails the job (model_error)
    # A worker renews its hold on each job it serves; when it dies, its jobs are sent again
    # once this lapses (checked every job_lease_s / 2), not after the broker's visibility timeout.
    job_lease_s: float = Field(10, ge=1)
    result_ttl_s: int = Field(86400, gt=0)  # how long finished jobs can be polled
    chat_concurrency: int = Field(16, ge=1)  # relaying threads per chat worker
    # Logs: what changed (containers ready, failed, removed; pools degraded or whole; jobs
    # that failed), one line each; verbose adds every task and beat tick.
    verbose: bool = False

    # API: bearer tokens per tenant, as plain text or "sha256:<hex digest>" (kept hashed)
    api_keys: dict[str, SecretStr] = {}
    admin_tenants: list[str] = ["admin"]  # may change pools and see every job
    tenant_limits: TenantLimits = TenantLimits()  # every tenant's, send_task's ("celery") included
    tenant_overrides: dict[str, TenantLimits] = {}  # per tenant, in place of tenant_limits
    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    max_wait_s: float = Field(60, gt=0)  # longest long poll (?wait=N)
    max_stream_s: float = Field(900, gt=0)  # longest an event stream stays open (a job's whole life, as a rule)
    api_read_timeout_s: float = Field(30, gt=0)  # longest wait for a byte of a request body (headers: 5 s)
    api_max_open_requests: int = Field(10_000, ge=10)  # per API process (gevent worker connections)
    max_open_waits: int = Field(5_000, ge=1)  # long polls and streams held at once, per API process
    max_open_waits_per_tenant: int = Field(1_000, ge=1)  # the same, per tenant and API process
    chat_wait_s: float = Field(60, ge=0)  # /v1/chat/completions answers 202 after this

    # Flower: basic auth, read-only unless told otherwise
    flower_host: str = "127.0.0.1"
    flower_port: int = Field(5555, ge=1, le=65535)
    flower_user: str = "admin"
    flower_password: SecretStr | None = None
    pools: dict[str, PoolSpec] = Field(default_factory=lambda: {"chatbot": reference_pool()})

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, pools: dict[str, PoolSpec]) -> dict[str, PoolSpec]:
        for name in pools:
            if not re.match(NAME, name):
                raise ValueError(f"pool name {name!r} must match {NAME}")
        return pools

    @model_validator(mode="after")
    def _kubernetes_names(self) -> "Settings":
        """Pool and deployment names become pod names and label values there."""
        for name, spec in self.pools.items():
            if spec.runtime == "kubernetes" and not re.match(KUBE_POOL, name):
                raise ValueError(f"kubernetes pool name {name!r} must match {KUBE_POOL}")
            if spec.runtime == "kubernetes" and not re.match(LABEL_VALUE, self.deployment):
                raise ValueError(f"deployment {self.deployment!r} must match {LABEL_VALUE} (a label value)")
        return self

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for tenant, key in keys.items():
            if not re.match(NAME, tenant):
                raise ValueError(f"tenant name {tenant!r} must match {NAME}")
            if tenant == SEND_TASK_TENANT:
                raise ValueError(f"tenant name {tenant!r} is reserved for jobs sent with send_task")
            value = key.get_secret_value()
            if value.startswith("sha256:") and not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
                raise ValueError(f"tenant {tenant!r}: a sha256: key must be 64 lowercase hex digits")
            if len(value) < 16:
                raise ValueError(f"tenant {tenant!r}: its key must be at least 16 characters")
        return keys

    @field_validator("port_range")
    @classmethod
    def _port_range(cls, ports: tuple[int, int]) -> tuple[int, int]:
        low, high = ports
        if not 1024 <= low < high <= 65535:
            raise ValueError("port_range must be two ports, low < high, within 1024-65535")
        return ports

    @field_validator("boot_backoff_s")
    @classmethod
    def _backoff(cls, pauses: tuple[float, float]) -> tuple[float, float]:
        if not 0 < pauses[0] <= pauses[1]:
            raise ValueError("boot_backoff_s must be (first, longest) with 0 < first <= longest")
        return pauses

    @model_validator(mode="after")
    def _engines(self) -> "Settings":
        for name in self.engines:
            if not re.match(NAME, name):
                raise ValueError(f"engine name {name!r} must match {NAME}")
        if self.engine is not None and self.engine not in self.engine_specs:
            raise ValueError(f"engine {self.engine!r} is not configured; known: {', '.join(self.engine_specs)}")
        if len(self.engines) > 1:
            for name, spec in self.pools.items():
                if spec.runtime not in ("docker", "auto"):
                    raise ValueError(f"pool {name!r}: several engines need runtime 'docker', not {spec.runtime!r}")
        return self

    @property
    def engine_specs(self) -> dict[str, EngineSpec]:
        """The engines, by name: as configured, else the one local engine."""
        return dict(self.engines) or {DEFAULT_ENGINE: EngineSpec(docker_host=self.docker_host,
                                                                 port_range=self.port_range)}

    @property
    def own_engine(self) -> str | None:
        """The engine this process drives: the one named, else the only one there is; None
        (several engines, none named: a chat worker, the API) drives none."""
        engines = self.engine_specs
        return self.engine or (next(iter(engines)) if len(engines) == 1 else None)

    def limits(self, tenant: str) -> TenantLimits:
        return self.tenant_overrides.get(tenant, self.tenant_limits)

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def chat_time_limit_s(self) -> float:
        """A chat job's hard limit: a full wait for a container plus two relays (the retry)."""
        return self.claim_timeout_s + 2 * self.chat_timeout_s + 10

    @property
    def line_max_age_s(self) -> float:
        """Older entries in a pool's line are stale (their job is gone) and dropped. A parked
        job past claim_timeout_s is failed by the next hand-off well before that."""
        return self.claim_timeout_s + 60

    @property
    def visibility_timeout_s(self) -> int:
        """Longer than the longest task, or running jobs would be redelivered (celery#5935)."""
        return int(self.chat_time_limit_s + 10)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path := os.environ.get("GREENROOM_CONFIG"):
            if not Path(path).is_file():
                raise ConfigError(f"GREENROOM_CONFIG names {path!r}, which is not a file")
            source = TomlConfigSettingsSource(settings_cls, toml_file=path)
            if "api_keys" in source.toml_data and Path(path).stat().st_mode & 0o004:
                log.warning("%s holds api_keys and any user of this machine can read it: chmod o-r it", path)
            sources.append(source)
        return tuple(sources)


def load_settings(**overrides) -> Settings:
    """Build and validate settings, turning pydantic's report into one ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
