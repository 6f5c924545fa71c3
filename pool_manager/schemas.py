"""The shape of a chat job, validated the same way whether it came over REST or send_task."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # no slashes, no dots-only: safe in paths and keys
MAX_MESSAGES = 1000


def tenant_session(tenant: str, session_id: str) -> str:
    """A session's name inside greenroom. Clients name sessions within their tenant, so two
    tenants' `support-42` never meet ('/' is in neither a tenant name nor an id)."""
    return f"{tenant}/{session_id}"


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


class PoolStatus(BaseModel):
    """A pool's scale and its containers by state (GET /v1/pools, `greenroom pool status`)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    runtime: str
    target_idle: int = Field(ge=0)
    max_total: int = Field(ge=0)
    idle: int = Field(ge=0)
    warming: int = Field(ge=0)
    assigned: int = Field(ge=0)
    failed: int = Field(ge=0)
    booted: int = Field(ge=0)
    degraded: bool = Field(description="its last boots all failed (backing off), or its runtime fails")
    runtime_error: str | None = Field(description="why the last reconcile could not reach the runtime")


class PoolChange(BaseModel):
    """PATCH /v1/pools/<name>: target_idle may not exceed max_total (the new or the current one)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"minProperties": 1})

    target_idle: Annotated[int, Field(ge=0)] | None = absent()
    max_total: Annotated[int, Field(ge=1)] | None = absent()

    @field_validator("target_idle", "max_total", mode="before")
    @classmethod
    def _given_not_null(cls, value):
        if value is None:  # absent is fine; null is not a number
            raise ValueError("must be an integer")
        return value

    def values(self) -> dict[str, int]:
        return self.model_dump(exclude_none=True)
