"""Model servers as Docker containers (docker-py), labelled, hardened and limited."""

import os
import threading
from contextlib import contextmanager
from datetime import datetime

import docker
import docker.errors
from docker.types import LogConfig, Ulimit
import requests.exceptions

from ..errors import RuntimeFailure, RuntimeUnavailable
from ..settings import PoolSpec
from .base import ENGINE, MANAGED, OWNER, POOL, PORT, SPEC_HASH, Instance, Runtime


def container_options(runtime: Runtime, instance_id: str, pool: str, spec: PoolSpec, port: int, key: str,
                      spec_hash: str = "") -> dict:
    """The keyword arguments of containers.create: a pure function, testable without an engine."""
    env = runtime.server_env(instance_id, spec, port, key)
    options = dict(
        image=spec.image,
        name=instance_id,
        labels=runtime.labels(pool, port, spec_hash),
        environment=env,
        user=spec.user,
        mem_limit=spec.mem_limit,
        memswap_limit=spec.mem_limit,  # no swap beyond the memory limit
        nano_cpus=int(spec.cpus * 1e9),
        pids_limit=spec.pids_limit,
        ulimits=[Ulimit(name="nofile", soft=spec.nofile, hard=spec.nofile)],
        log_config=LogConfig(type="json-file", config={"max-size": spec.log_max_size, "max-file": "3"}),
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        read_only=True,
        tmpfs=spec.tmpfs,
        detach=True,
    )
    if spec.network == "host":
        options["network_mode"] = "host"
    else:  # reached by name on a user-defined network, as in docker-compose
        options["network"] = spec.network
        env.update(HOST="0.0.0.0", PORT=str(spec.port))
    return options


class DockerRuntime(Runtime):
    """One docker-py client per process, built on first use (after any fork)."""

    def __init__(self, owner: str, docker_host: str | None = None, **engine):
        super().__init__(owner, **engine)
        self._base_url = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    def labels(self, pool: str, port: int, spec_hash: str = "") -> dict[str, str]:
        return super().labels(pool, port, spec_hash) | {ENGINE: self.engine}

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = docker.DockerClient(base_url=self._base_url, timeout=30, max_pool_size=32)
            return self._client

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False

    def create(self, instance_id: str, pool: str, spec: PoolSpec, port: int, key: str,
               spec_hash: str = "") -> Instance:
        options = container_options(self, instance_id, pool, spec, port, key, spec_hash)
        with _translated(f"create {instance_id}"):
            container = self.client.containers.create(**options)
            try:
                container.start()
            except docker.errors.APIError:
                self.destroy(instance_id)
                raise
        return Instance(instance_id, pool, port, _created(container.attrs), running=True, spec_hash=spec_hash)

    def inspect(self, instance_id: str) -> Instance | None:
        with _translated(f"inspect {instance_id}"):
            try:
                attrs = self.client.api.inspect_container(instance_id)
            except docker.errors.NotFound:
                return None
        labels = attrs["Config"]["Labels"] or {}
        return Instance(instance_id, labels.get(POOL, ""), int(labels.get(PORT, 0)), _created(attrs),
                        running=attrs["State"]["Running"], spec_hash=labels.get(SPEC_HASH, ""))

    def destroy(self, instance_id: str) -> None:
        with _translated(f"destroy {instance_id}"):
            try:
                self.client.api.remove_container(instance_id, force=True)
            except docker.errors.NotFound:
                pass  # already gone: success
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: removal already under way
                    raise

    def list_managed(self) -> list[Instance]:
        filters = {"label": [f"{MANAGED}=true", f"{OWNER}={self.owner}"]}
        with _translated("list containers"):
            rows = self.client.api.containers(all=True, filters=filters)
        return [
            Instance(row["Names"][0].lstrip("/"), row["Labels"].get(POOL, ""), int(row["Labels"].get(PORT, 0)),
                     float(row["Created"]), running=row["State"] == "running",
                     spec_hash=row["Labels"].get(SPEC_HASH, ""))
            for row in rows
        ]

    def key_of(self, instance_id: str, spec: PoolSpec) -> str | None:
        with _translated(f"inspect {instance_id}"):
            try:
                env = self.client.api.inspect_container(instance_id)["Config"]["Env"] or []
            except docker.errors.NotFound:
                return None
        prefix = f"{spec.container_key_env}="
        return next((item.removeprefix(prefix) for item in env if item.startswith(prefix)), None)

    def endpoint(self, instance_id: str, spec: PoolSpec, port: int) -> str:
        if spec.network == "host":
            return super().endpoint(instance_id, spec, port)
        return f"http://{instance_id}:{spec.port}"

    def logs(self, instance_id: str, tail: int = 50) -> str:
        try:
            return self.client.api.logs(instance_id, tail=tail).decode(errors="replace")
        except docker.errors.DockerException as exc:
            return f"<no logs: {exc}>"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _created(attrs: dict) -> float:
    """Docker's creation time (nanosecond ISO text) as unix time."""
    stamp = attrs["Created"]
    return datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp()


@contextmanager
def _translated(action: str):
    """Turn docker-py and transport errors into greenroom's RuntimeFailure tree."""
    try:
        yield
    except docker.errors.APIError as exc:
        raise RuntimeFailure(f"docker {action} failed: {exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise RuntimeUnavailable(f"docker engine unreachable during {action}: {exc}") from exc
