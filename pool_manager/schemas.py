"""The shape of a chat job, validated the same way whether it came over REST or send_task."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # no slashes, no dots-only: safe in paths and keys
MAX_MESSAGES = 1000


def tenant_session(tenant: str, session_id: str) -> str:
    """A session's name inside greenroom. Clients name sessions within their tenant, so two
    tenants' `support-42` never meet ('/' is in neither a tenant name nor an id)."""
    return f"{tenant}/{session_id}"


def tenant_of(session: str) -> str:
    """The tenant of a session named by tenant_session."""
    return session.partition("/")[0]


MAX_CONTENT_CHARS = 200_000
RESERVED_OPTIONS = {"model", "messages", "stream", "session_id"}


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI's name, tool_call_id ... pass through

    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_CONTENT_CHARS)


class ChatJob(BaseModel):
    """The kwargs of greenroom.chat and the body of POST /v1/jobs."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=ID_PATTERN)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    session_id: str | None = Field(None, pattern=ID_PATTERN)
    options: dict[str, Any] = {}  # passed to the model server (temperature, max_tokens, ...)
    stream: StrictBool = False  # the reply streamed, chunk by chunk, into the job's log (GET /v1/jobs/<id>/events)

    @field_validator("options")
    @classmethod
    def _options_are_not_reserved(cls, options: dict[str, Any]) -> dict[str, Any]:
        if reserved := RESERVED_OPTIONS & options.keys():
            raise ValueError(f"options cannot set {', '.join(sorted(reserved))}")
        return options

    def task_kwargs(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


# ------------------------------------------------------------------ what clients read back
# These models are the API's response shapes and feed its OpenAPI document as they are.

def _never_null(schema: dict) -> None:
    """For a field that is left out when it has no value, never sent as null: its schema
    without the null pydantic adds for `X | None`."""
    options = [option for option in schema.pop("anyOf", []) if option.get("type") != "null"]
    if len(options) == 1:
        schema.update(options[0])
    schema.pop("default", None)


def absent(description: str | None = None):
    """The default of an optional field that is left out, not null, when it has no value."""
    return Field(None, description=description, json_schema_extra=_never_null)


JOB_STATES = ("queued", "waiting_for_container", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")  # never left: a redelivered job finds its result
CANCELLABLE = ("queued", "waiting_for_container")


class ErrorDetail(BaseModel):
    code: str
    message: str


class Timings(BaseModel):
    queued_s: float
    waited_for_container_s: float
    in_container_s: float
    total_s: float


class ReplyMeta(BaseModel):
    """greenroom's part of a reply: how to continue the conversation, and how it went."""

    job_id: str
    session_id: str = Field(description="send it with the next message to continue in the same container")
    container: str
    warm: bool = Field(description="a container was idle when the job asked: no wait")
    new_session: bool
    timings: Timings


class ChatCompletion(BaseModel):
    """The model server's OpenAI chat.completion, plus greenroom's metadata."""

    model_config = ConfigDict(extra="allow")

    object: str
    choices: list[dict[str, Any]]
    model: str | None = absent()
    greenroom: ReplyMeta | None = absent()


class JobView(BaseModel):
    """A job as clients see it (GET /v1/jobs/<id>)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: Literal[JOB_STATES]
    model: str
    session_id: str
    new_session: bool | None = absent("this job started its session: no session of that id was open (a mistyped "
                                      "session_id starts a new one)")
    created_at: float
    finished_at: float | None = absent()
    position: Annotated[int, Field(ge=0)] | None = absent("place in line while waiting_for_container")
    result: ChatCompletion | None = absent()
    error: ErrorDetail | None = absent()

    @classmethod
    def of(cls, record: dict) -> "JobView":
        """From a job record (jobs.JobStore.get): its public fields only."""
        return cls.model_validate({name: record[name] for name in cls.model_fields if name in record})

    def public(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


class EngineStatus(BaseModel):
    """A pool's containers on one Docker engine, and how the engine is."""

    model_config = ConfigDict(extra="forbid")

    name: str
    idle: int = Field(ge=0)
    warming: int = Field(ge=0)
    assigned: int = Field(ge=0)
    healthy: bool = Field(description="its worker listed it lately (one engine: its runtime answers)")
    error: str | None = Field(None, description="why its worker could not reach it last (null: it could)")


class AutoSizing(BaseModel):
    """What an auto target was computed from (pool_manager/sizing.py), at its last reconcile."""

    model_config = ConfigDict(extra="forbid")

    rate_per_s: float = Field(ge=0, description="new sessions per second, as used")
    long_rate_per_s: float = Field(ge=0, description="over window_s")
    short_rate_per_s: float = Field(ge=0, description="over a tenth of window_s, its busiest second trimmed")
    short_counted: bool = Field(description="the short window's rate was used (a step up in load)")
    boot_s: float = Field(ge=0, description="the boot time used: p90 of the latest boots")
    boots: int = Field(ge=0, description="how many boots boot_s comes from (0: assumed)")
    computed: int = Field(ge=0, description="the idle count this rate and boot time ask for")
    held: int = Field(ge=0, description="the highest of the cooldown: a lower figure waits it out")
    warm_goal: float
    min_idle: int = Field(ge=0)
    max_idle: int = Field(ge=0)
    window_s: float
    cooldown_s: float
    at: float = Field(description="when it was computed (Unix time)")


class Target(BaseModel):
    """The pool's idle target now and where it comes from: `source` says which, `why` in words."""

    model_config = ConfigDict(extra="forbid")

    idle: int = Field(ge=0, description="idle containers kept waiting now (before the jobs waiting in line)")
    max_total: int = Field(ge=0)
    setting: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        description="target_idle in effect: a number or auto")
    configured_idle: Annotated[int, Field(ge=0)] | Literal["auto"]
    configured_max_total: int = Field(ge=0)
    source: Literal["configured", "override", "computed"] = Field(
        description="override: set at run time (pool scale, PATCH); computed: target_idle is auto")
    why: str
    overrides: dict[str, Annotated[int, Field(ge=0)] | Literal["auto"]] | None = Field(None, description=(
        "settings set at run time, winning over the configuration until dropped (pool scale --reset); null: none"))
    override_set_at: float | None = Field(None, description="when the overrides were last set (Unix time)")
    auto: AutoSizing | None = Field(None, description="what an auto target was computed from; null: not auto, "
                                    "or no pass since")


class OldContainers(BaseModel):
    """Containers of an older spec hash, by state: a rollout retires the idle ones as new
    ones become ready; the assigned keep their sessions."""

    model_config = ConfigDict(extra="forbid")

    warming: int = Field(ge=0)
    idle: int = Field(ge=0)
    assigned: int = Field(ge=0)


class PoolStatus(BaseModel):
    """A pool's scale and its containers by state (GET /v1/pools, `greenroom pool status`)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    runtime: str
    target_idle: int = Field(ge=0, description="the idle target now (target.why says where it comes from)")
    max_total: int = Field(ge=0)
    idle: int = Field(ge=0)
    warming: int = Field(ge=0)
    assigned: int = Field(ge=0)
    failed: int = Field(ge=0)
    booted: int = Field(ge=0)
    degraded: bool = Field(description="its last boots all failed (backing off), or its runtime fails")
    runtime_error: str | None = Field(description="why the last reconcile could not reach the runtime")
    engines: list[EngineStatus] = Field(description="the same counts per Docker engine")
    target: Target
    spec_hash: str = Field(description="what new containers are made from (their greenroom.spec-hash label)")
    old: OldContainers
    rollout: Literal["none", "rolling", "stopped"] = Field(
        description="rolling: containers of an older spec remain; stopped: and the new spec's boots fail")
    idle_container_seconds: float = Field(ge=0, description="time containers spent idle, summed, since the start")


class PoolChange(BaseModel):
    """PATCH /v1/pools/<name>: target_idle a number or "auto"; target_idle may not exceed
    max_total (the new or the current one). null drops a run-time setting: the
    configuration holds again for it (as in a JSON merge patch)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"minProperties": 1})

    target_idle: Annotated[int, Field(ge=0)] | Literal["auto"] | None = None
    max_total: Annotated[int, Field(ge=1)] | None = None
    min_idle: Annotated[int, Field(ge=0)] | None = None
    max_idle: Annotated[int, Field(ge=0)] | None = None

    def values(self) -> dict[str, int | str | None]:
        """The fields given, None for those given as null."""
        return {name: getattr(self, name) for name in self.model_fields_set}


# ------------------------------------------------------------------ the pool page (GET /ui/state)

class Tile(BaseModel):
    """One container; `retiring`: out of service, being removed."""

    model_config = ConfigDict(extra="forbid")

    id: str
    state: Literal["warming", "idle", "assigned", "retiring"]
    old: bool = Field(description="made from an older spec (a rollout replaces it)")
    engine: str = Field(description="where it runs; 'local': this host's engine")
    age_s: float = Field(description="since it was created")
    in_state_s: float = Field(description="since it entered its state")
    session: str | None = absent("the session it serves (tenant/id)")


class TileCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    warming: int = Field(ge=0)
    idle: int = Field(ge=0)
    assigned: int = Field(ge=0)
    retiring: int = Field(ge=0)


class LineEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    position: int = Field(ge=1)
    job_id: str
    tenant: str
    waited_s: float


class Slot(BaseModel):
    """New sessions' claims in one slot of time: how many, how many warm, and wait quantiles
    (bucket upper bounds)."""

    model_config = ConfigDict(extra="forbid")

    start: float
    claims: int = Field(ge=0)
    warm: int = Field(ge=0)
    wait_p50_s: float | None = absent("none without claims")
    wait_p95_s: float | None = absent("none without claims")


class PoolEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: float
    kind: Literal["booted", "failed"]
    container: str
    seconds: float = Field(description="booted: how long the boot took; failed: how long it lived")


class PoolBoard(BaseModel):
    """What the pool page shows of one pool."""

    model_config = ConfigDict(extra="forbid")

    name: str
    runtime: str
    degraded: bool
    runtime_error: str | None = absent("why the last reconcile could not reach the runtime")
    target: Target
    counts: TileCounts
    tiles: list[Tile]
    tiles_omitted: int = Field(ge=0, description="containers past the page's limit, not shown")
    line: list[LineEntry]
    waiting: int = Field(ge=0, description="jobs in line (the line lists the first of them)")
    warm_share_goal: float
    slot_s: int
    slots: list[Slot] = Field(description="oldest first")
    events: list[PoolEvent] = Field(description="newest first")
    reconciled_at: float | None = absent("when the last reconcile pass ended (absent: never)")


class Board(BaseModel):
    model_config = ConfigDict(extra="forbid")

    now: float
    tenant: str = Field(description="who is signed in")
    pools: list[PoolBoard]
