"""One exception tree for greenroom; SDK errors are translated at the boundary.

    GreenroomError
    ├── ConfigError            settings or a pool spec are invalid
    ├── UnknownPool            no pool of that name
    ├── LimitExceeded          a tenant is over one of its limits (sessions, jobs, rate)
    ├── SessionBusy            another message of the session is being relayed
    ├── SessionClosed          the session ended or its container is gone
    ├── SessionModelMismatch   a session's message named another model
    ├── ClaimTimeout           no container became free within claim_timeout_s
    ├── JobCancelled           the job was cancelled while it waited
    ├── DeliveryLost           another delivery took the job over (this worker's lease lapsed)
    ├── ContainerLost          the container died or stopped answering mid-job
    │   ├── ContainerUnreachable  it took no connection: the message never reached it
    │   └── ContainerTimeout   the container did not reply within chat_timeout_s
    ├── ModelError             the model server answered with an error
    └── RuntimeFailure         a runtime (Docker, process) call failed
        └── RuntimeUnavailable the runtime cannot be reached at all
"""


class GreenroomError(Exception):
    """Base of every error greenroom raises on purpose."""

    code = "greenroom_error"


class ConfigError(GreenroomError):
    code = "config_error"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field  # the setting at fault, where one is


class UnknownPool(GreenroomError):
    code = "unknown_model"


class LimitExceeded(GreenroomError):
    code = "limit_exceeded"
    RETRY_AFTER_S = {"submissions_per_second": 1, "jobs_in_flight": 2, "sessions": 5}

    def __init__(self, tenant: str, limit: str, value: int):
        super().__init__(f"tenant {tenant!r} is at its limit of {value} {limit.replace('_', ' ')}")
        self.limit = limit
        self.retry_after_s = self.RETRY_AFTER_S[limit]


class SessionBusy(GreenroomError):
    code = "session_busy"


class SessionClosed(GreenroomError):
    code = "session_closed"


class SessionModelMismatch(GreenroomError):
    code = "session_model_mismatch"


class ClaimTimeout(GreenroomError):
    code = "no_container_available"


class JobCancelled(GreenroomError):
    code = "cancelled"


class DeliveryLost(GreenroomError):
    code = "delivery_lost"


class Parked(GreenroomError):
    """Not a failure: the job waits in line, and no worker holds it (handoff.py)."""

    code = "parked"


class ContainerLost(GreenroomError):
    code = "container_lost"


class ContainerUnreachable(ContainerLost):
    code = "container_lost"  # the same to callers; the relay may try a new session's message elsewhere


class ContainerTimeout(ContainerLost):
    code = "container_timeout"


class ModelError(GreenroomError):
    code = "model_error"

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status the model server answered, if it answered one


class RuntimeFailure(GreenroomError):
    code = "runtime_failure"


class RuntimeUnavailable(RuntimeFailure):
    code = "runtime_unavailable"
