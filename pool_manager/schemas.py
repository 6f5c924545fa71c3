"""The shape of a chat job, validated the same way whether it came over REST or send_task."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # no slashes, no dots-only: safe in paths and keys
MAX_MESSAGES = 1000
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
