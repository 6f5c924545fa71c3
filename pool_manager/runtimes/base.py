"""The narrow interface every runtime implements, and what it reports."""

from abc import ABC, abstractmethod
from dataclasses import dataclass

from ..httpclient import is_healthy
from ..settings import DEFAULT_ENGINE, PoolSpec

MANAGED = "greenroom.managed"
POOL = "greenroom.pool"
OWNER = "greenroom.owner"
PORT = "greenroom.port"
ENGINE = "greenroom.engine"
SPEC_HASH = "greenroom.spec-hash"  # what it was made from (specs.spec_hash): a rollout's old and new


@dataclass(frozen=True)
class Instance:
    """One model server as the runtime sees it: the ground truth of what exists."""

    id: str  # greenroom's id, also the container name
    pool: str
    port: int
    created_at: float  # unix time
    running: bool
    spec_hash: str = ""  # its greenroom.spec-hash label ("" when it has none)


class Runtime(ABC):
    """Creates, inspects and destroys the model servers of one owner (deployment)."""

    def __init__(self, owner: str, engine: str = DEFAULT_ENGINE, address: str = "127.0.0.1"):
        self.owner = owner
        self.engine = engine  # the engine's name, on every record and label (engines.py)
        self.address = address  # where its servers listen, and other hosts reach them

    def labels(self, pool: str, port: int, spec_hash: str = "") -> dict[str, str]:
        labels = {MANAGED: "true", POOL: pool, OWNER: self.owner, PORT: str(port)}
        return labels | ({SPEC_HASH: spec_hash} if spec_hash else {})

    @abstractmethod
    def create(self, instance_id: str, pool: str, spec: PoolSpec, port: int, key: str,
               spec_hash: str = "") -> Instance:
        """Start a server that requires `key` as its bearer token, labelled with spec_hash
        (listed and inspected with it); return once it exists (not once it is healthy)."""

    @abstractmethod
    def inspect(self, instance_id: str) -> Instance | None:
        """The instance, or None when it does not exist."""

    @abstractmethod
    def destroy(self, instance_id: str) -> None:
        """Remove the instance; removing one that is already gone succeeds."""

    @abstractmethod
    def list_managed(self) -> list[Instance]:
        """Every instance this owner has, running or not."""

    @abstractmethod
    def key_of(self, instance_id: str, spec: PoolSpec) -> str | None:
        """The bearer key the instance was started with, read back from the runtime (to
        adopt it after the state lost its record), or None when it cannot be told."""

    def endpoint(self, instance_id: str, spec: PoolSpec, port: int) -> str:
        """The base URL at which the instance serves ("" while the runtime cannot tell yet,
        as for a pod that has no IP before it is scheduled)."""
        return f"http://{self.address}:{port}"

    def ready_endpoint(self, instance_id: str, spec: PoolSpec, port: int, timeout: float = 1.0) -> str | None:
        """The base URL once the instance is ready to serve, else None. Here: its endpoint
        answers health_path within timeout; a runtime with its own readiness (Kubernetes'
        Ready condition) says so instead."""
        endpoint = self.endpoint(instance_id, spec, port)
        return endpoint if endpoint and is_healthy(endpoint, spec.health_path, timeout=timeout) else None

    def mark(self, instance_id: str, state: str) -> None:
        """Show the instance's pool state (warming, idle, assigned) where operators look:
        pod labels on Kubernetes. Nothing here; an instance already gone is no error."""

    def server_env(self, instance_id: str, spec: PoolSpec, port: int, key: str) -> dict[str, str]:
        """What the server is told: the spec's env plus where to listen, who it is and its key."""
        return spec.env | {"HOST": self.address, "PORT": str(port), "INSTANCE_ID": instance_id,
                           spec.container_key_env: key}

    def close(self) -> None:
        """Release client resources (not the instances). A call after it works or raises a
        RuntimeFailure: boot watchers may outlive it."""
