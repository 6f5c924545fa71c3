"""Pure functions for the Kubernetes runtime: the pod manifest built from a PoolSpec, and
what greenroom reads back from a pod. No API calls here, so all of it is testable (and
schema-checkable) without a cluster, as docker.py's container_options is."""

import re
from dataclasses import dataclass
from datetime import datetime

from ..settings import PoolSpec

STATE = "greenroom.state"  # warming | idle | assigned: moved by greenroom, for kubectl -l
RECOMMENDED = {"app.kubernetes.io/component": "model-server", "app.kubernetes.io/managed-by": "greenroom"}
CONTAINER = "model"
GRACE_S = 5  # a pool's server holds no state worth a long shutdown
# A pod on a lost node is evicted after this (the default is 300 s) and then replaced.
NODE_LOSS_TOLERATION_S = 30
_MEMORY_UNITS = {"b": "", "k": "Ki", "m": "Mi", "g": "Gi"}


def memory_quantity(mem_limit: str) -> str:
    """Docker's "256m" (binary units) as Kubernetes' "256Mi"."""
    number, unit = re.fullmatch(r"(\d+)([bkmg]?)", mem_limit).groups()
    return number + _MEMORY_UNITS.get(unit, "")


def cpu_quantity(cpus: float) -> str:
    return f"{round(cpus * 1000)}m"


def user_ids(user: str) -> tuple[int, int]:
    """"uid[:gid]" as numbers (Kubernetes takes no user names)."""
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def pod_labels(base: dict[str, str], pool: str, state: str) -> dict[str, str]:
    return base | RECOMMENDED | {"app.kubernetes.io/name": pool, STATE: state}


def pod_manifest(name: str, labels: dict[str, str], spec: PoolSpec, env: dict[str, str]) -> dict:
    """The Pod greenroom creates for one server of the pool."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",  # a crashed server is replaced, not restarted with its memory lost
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": GRACE_S,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container(spec, env)],
            "volumes": [{"name": volume, "emptyDir": _empty_dir(options)}
                        for volume, (_, options) in _tmpfs(spec).items()],
            "tolerations": [{"key": f"node.kubernetes.io/{taint}", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": NODE_LOSS_TOLERATION_S} for taint in ("not-ready", "unreachable")],
        },
    }


def container(spec: PoolSpec, env: dict[str, str]) -> dict:
    uid, gid = user_ids(spec.user)
    resources = {"memory": memory_quantity(spec.mem_limit), "cpu": cpu_quantity(spec.cpus)}
    return {
        "name": CONTAINER,
        "image": spec.image,
        "env": [{"name": key, "value": value} for key, value in env.items()],
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "readinessProbe": readiness_probe(spec),
        "resources": {"requests": resources, "limits": dict(resources)},
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid,
            "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": volume, "mountPath": path} for volume, (path, _) in _tmpfs(spec).items()],
    }


def readiness_probe(spec: PoolSpec) -> dict:
    """The kubelet asks health_path every second; one 200 makes the pod Ready."""
    return {"httpGet": {"path": spec.health_path, "port": "http"},
            "periodSeconds": 1, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3}


def _tmpfs(spec: PoolSpec) -> dict[str, tuple[str, str]]:
    """Docker's tmpfs mounts (the writable places of a read-only root) as named volumes."""
    return {f"tmpfs-{index}": (path, options) for index, (path, options) in enumerate(sorted(spec.tmpfs.items()))}


def _empty_dir(options: str) -> dict:
    size = re.search(r"size=(\d+[bkmg]?)", options)
    return {"medium": "Memory"} | ({"sizeLimit": memory_quantity(size.group(1))} if size else {})


def container_env(pod: dict) -> dict[str, str]:
    """The plain values of the server container's environment."""
    containers = (pod.get("spec") or {}).get("containers") or []
    server = next((c for c in containers if c.get("name") == CONTAINER), {})
    return {item["name"]: item["value"] for item in server.get("env") or [] if "value" in item}


@dataclass(frozen=True)
class PodView:
    """What greenroom reads from a pod."""

    name: str
    labels: dict
    created_at: float
    running: bool  # pending or running, and not being deleted
    ready: bool  # its Ready condition: the readiness probe answered
    ip: str | None


def pod_view(pod: dict) -> PodView:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    deleting = bool(meta.get("deletionTimestamp"))
    running = status.get("phase", "Pending") in ("Pending", "Running") and not deleting
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return PodView(meta["name"], dict(meta.get("labels") or {}), _timestamp(meta.get("creationTimestamp")),
                   running, running and ready, status.get("podIP") or None)


def _timestamp(stamp) -> float:
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() if stamp else 0.0
