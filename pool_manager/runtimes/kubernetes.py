"""Model servers as pods in one namespace (lightkube), labelled like containers plus the
recommended app.kubernetes.io labels and a state label that greenroom moves (warming ->
idle -> assigned), so that `kubectl get pods -l greenroom.state=idle` shows the pool.

Readiness is the pod's Ready condition (its readiness probe asks health_path), and the
endpoint is the pod's IP and the spec's port, both read from a watch (kube_watch.py).
"""

import threading
from contextlib import contextmanager

import httpx
from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ConfigError as KubeConfigError
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType

from ..errors import RuntimeFailure, RuntimeUnavailable
from ..settings import PoolSpec
from .base import MANAGED, OWNER, POOL, PORT, SPEC_HASH, Instance, Runtime
from .kube_spec import GRACE_S, STATE, PodView, container_env, pod_labels, pod_manifest, pod_view
from .kube_watch import PodWatch

UNAVAILABLE = {429, 502, 503, 504}  # the API server is overloaded or away: not our request's fault
REMOVAL_WAIT_S = GRACE_S + 10  # how long destroy waits for the kubelet to stop the pod
SYNC_WAIT_S = 10  # how long readiness waits for the watch's first list


class KubernetesRuntime(Runtime):
    """One API client per process, built on first use (after any fork), and one watch."""

    def __init__(self, owner: str, namespace: str = "default", kubeconfig: str | None = None):
        super().__init__(owner)
        self.namespace, self.kubeconfig = namespace, kubeconfig
        self.selector = {MANAGED: "true", OWNER: owner}
        self._client: Client | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.watch = PodWatch(self._connect, namespace, self.selector)

    def _connect(self) -> Client:
        """A client from the kubeconfig file, else the pod's service account, else
        $KUBECONFIG or ~/.kube/config."""
        config = KubeConfig.from_file(self.kubeconfig) if self.kubeconfig else KubeConfig.from_env()
        return Client(config, namespace=self.namespace, field_manager="greenroom", timeout=httpx.Timeout(10.0))

    @property
    def client(self) -> Client:
        """The API client; once closed, a RuntimeUnavailable (a boot watcher may outlive
        close(), and handles only RuntimeFailure)."""
        with self._lock:
            if self._closed:
                raise RuntimeUnavailable(f"the kubernetes runtime of {self.owner} is closed")
            if self._client is None:
                self._client = self._connect()
            return self._client

    def create(self, instance_id: str, pool: str, spec: PoolSpec, port: int, key: str,
               spec_hash: str = "") -> Instance:
        labels = pod_labels(self.labels(pool, port, spec_hash), pool, "warming")
        manifest = pod_manifest(instance_id, labels, spec, self.server_env(instance_id, spec, port, key))
        self.watch.start()  # readiness will come from it
        with _translated(f"create pod {instance_id}"):
            pod = self.client.create(Pod.from_dict(manifest), namespace=self.namespace)
        return _instance(pod_view(pod.to_dict()))

    def inspect(self, instance_id: str) -> Instance | None:
        with _absent_is_none(), _translated(f"read pod {instance_id}"):
            return _instance(pod_view(self.client.get(Pod, instance_id, namespace=self.namespace).to_dict()))

    def destroy(self, instance_id: str) -> None:
        """Delete the pod, then wait (on the watch) until the kubelet has stopped it, so
        that, as with a container, it is gone when this returns. Past REMOVAL_WAIT_S it
        still lists as not running; a later reconcile deletes it again. (The watch starts
        only after a delete that was allowed: a chat worker, which holds no rights on
        pods, gets its refusal and starts no watch that would fail forever.)"""
        with _absent_is_none(), _translated(f"delete pod {instance_id}"):
            self.client.delete(Pod, instance_id, namespace=self.namespace, grace_period=GRACE_S)
        self.watch.start()
        self.watch.wait(lambda: self.watch.gone(instance_id), REMOVAL_WAIT_S)

    def key_of(self, instance_id: str, spec: PoolSpec) -> str | None:
        """The key from the pod's environment (readable by whoever may get pods there)."""
        with _absent_is_none(), _translated(f"read pod {instance_id}"):
            pod = self.client.get(Pod, instance_id, namespace=self.namespace).to_dict()
            return container_env(pod).get(spec.container_key_env)

    def list_managed(self) -> list[Instance]:
        with _translated("list pods"):
            pods = self.client.list(Pod, namespace=self.namespace, labels=self.selector)
            return [_instance(pod_view(pod.to_dict())) for pod in pods]

    def endpoint(self, instance_id: str, spec: PoolSpec, port: int) -> str:
        view = self.watch.get(instance_id)
        return f"http://{view.ip}:{spec.port}" if view and view.ip else ""

    def ready_endpoint(self, instance_id: str, spec: PoolSpec, port: int, timeout: float = 1.0) -> str | None:
        """The pod's IP and port once its Ready condition holds (read from the watch; until
        the watch has listed the pods it cannot tell, and says so rather than "not ready",
        which would have a reconcile destroy a healthy pod it is adopting)."""
        self.watch.start()
        if not self.watch.synced(SYNC_WAIT_S):
            raise RuntimeUnavailable(f"no list of the pods in {self.namespace} within {SYNC_WAIT_S}s")
        view = self.watch.get(instance_id)
        return f"http://{view.ip}:{spec.port}" if view and view.ready and view.ip else None

    def mark(self, instance_id: str, state: str) -> None:
        """Move the pod's state label, unless the watch shows it there already."""
        self.watch.start()
        view = self.watch.get(instance_id)
        if view and view.labels.get(STATE) == state:
            return
        patch = {"metadata": {"labels": {STATE: state}}}
        with _absent_is_none(), _translated(f"label pod {instance_id}"):
            self.client.patch(Pod, instance_id, patch, namespace=self.namespace, patch_type=PatchType.MERGE)

    def server_env(self, instance_id: str, spec: PoolSpec, port: int, key: str) -> dict[str, str]:
        """A pod has an address of its own: the server listens on it at the spec's port."""
        return super().server_env(instance_id, spec, port, key) | {"HOST": "0.0.0.0", "PORT": str(spec.port)}

    def logs(self, instance_id: str, tail: int = 50) -> str:
        try:
            return "\n".join(self.client.log(instance_id, namespace=self.namespace, tail_lines=tail))
        except (httpx.HTTPError, KubeConfigError, OSError, RuntimeFailure) as exc:
            return f"<no logs: {exc}>"

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.watch.stop()
        if self._client is not None:
            self._client.close()


def _instance(view: PodView) -> Instance:
    return Instance(view.name, view.labels.get(POOL, ""), int(view.labels.get(PORT, 0)), view.created_at,
                    running=view.running, spec_hash=view.labels.get(SPEC_HASH, ""))


@contextmanager
def _absent_is_none():
    """A 404 (the pod is gone) ends the block quietly; a function returns None."""
    try:
        yield
    except RuntimeFailure as exc:
        if not isinstance(exc.__cause__, httpx.HTTPStatusError) or exc.__cause__.response.status_code != 404:
            raise


@contextmanager
def _translated(action: str):
    """Turn lightkube's and httpx's errors into greenroom's RuntimeFailure tree."""
    try:
        yield
    except httpx.HTTPStatusError as exc:  # lightkube's ApiError is one
        status = exc.response.status_code
        kind = RuntimeUnavailable if status in UNAVAILABLE else RuntimeFailure
        raise kind(f"kubernetes {action} failed: {status} {_message(exc)}") from exc
    except (httpx.HTTPError, KubeConfigError, OSError) as exc:
        raise RuntimeUnavailable(f"kubernetes API unreachable during {action}: {exc}") from exc


def _message(exc: httpx.HTTPStatusError) -> str:
    try:
        return str(exc.response.json().get("message", ""))[:300]
    except ValueError:
        return exc.response.text[:300]
