"""The kubernetes runtime's pure parts, without a server: the pod manifest built from a
PoolSpec (hardened, limited, labelled, probed, valid against the Kubernetes schema) and
what greenroom reads back from a pod."""

import kubernetes_validate
import pytest

from pool_manager.runtimes.kube_spec import (container_env, cpu_quantity, memory_quantity, pod_labels,
                                             pod_manifest, pod_view, user_ids)
from pool_manager.runtimes.kubernetes import KubernetesRuntime
from pool_manager.settings import reference_pool

pytestmark = pytest.mark.timeout(30)


def manifest(**spec_fields) -> dict:
    runtime = KubernetesRuntime("prod", namespace="models")
    spec = reference_pool(runtime="kubernetes", **spec_fields)
    labels = pod_labels(runtime.labels("chatbot", 20001), "chatbot", "warming")
    name = "gr-chatbot-0123456789ab"
    return pod_manifest(name, labels, spec, runtime.server_env(name, spec, 20001, "the-key"))


def test_the_pod_is_valid_for_the_kubernetes_schema():
    kubernetes_validate.validate(manifest(), "1.37.0", strict=True)


def test_the_pod_is_hardened_as_containers_are():
    pod = manifest(user="10001:10002")
    spec, (container,) = pod["spec"], pod["spec"]["containers"]
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10002, "allowPrivilegeEscalation": False,
        "privileged": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert container["volumeMounts"] == [{"name": "tmpfs-0", "mountPath": "/tmp"}]
    assert spec["volumes"] == [{"name": "tmpfs-0", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]


def test_memory_and_cpu_are_both_requests_and_limits():
    resources = manifest(mem_limit="256m", cpus=0.5)["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"memory": "256Mi", "cpu": "500m"}, "limits": {"memory": "256Mi", "cpu": "500m"}}


def test_labels_readiness_probe_and_environment():
    pod = manifest(health_path="/ready", port=9000, env={"BOOT_SECONDS": "3"})
    assert pod["metadata"]["labels"] == {
        "greenroom.managed": "true", "greenroom.pool": "chatbot", "greenroom.owner": "prod", "greenroom.port": "20001",
        "greenroom.state": "warming", "app.kubernetes.io/name": "chatbot",
        "app.kubernetes.io/component": "model-server", "app.kubernetes.io/managed-by": "greenroom"}
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    assert container_env(pod) == {"BOOT_SECONDS": "3", "HOST": "0.0.0.0", "PORT": "9000",
                                  "INSTANCE_ID": "gr-chatbot-0123456789ab", "API_KEY": "the-key"}


@pytest.mark.parametrize("docker, kube", [("1g", "1Gi"), ("256m", "256Mi"), ("512k", "512Ki"), ("1000", "1000"),
                                          ("64b", "64")])
def test_memory_quantities(docker, kube):
    assert memory_quantity(docker) == kube


def test_cpu_quantities_and_user_ids():
    assert (cpu_quantity(1.0), cpu_quantity(0.25)) == ("1000m", "250m")
    assert (user_ids("10001"), user_ids("10001:20002")) == ((10001, 10001), (10001, 20002))


def pod(phase="Running", ready="True", deleting=False, ip="10.1.2.3") -> dict:
    meta = {"name": "p", "labels": {"greenroom.state": "idle"}, "creationTimestamp": "2026-01-01T00:00:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    status = {"phase": phase, "podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}
    return {"metadata": meta, "status": status}


@pytest.mark.parametrize("fields, running, ready", [
    ({}, True, True),
    ({"ready": "False"}, True, False),
    ({"phase": "Pending", "ready": "False", "ip": None}, True, False),
    ({"phase": "Failed", "ready": "False"}, False, False),  # crashed, or evicted
    ({"phase": "Succeeded", "ready": "False"}, False, False),
    ({"deleting": True}, False, False),  # terminating: no longer serves, still counts
])
def test_what_greenroom_reads_from_a_pod(fields, running, ready):
    view = pod_view(pod(**fields))
    assert (view.running, view.ready) == (running, ready)
    assert view.created_at == 1767225600.0 and view.labels == {"greenroom.state": "idle"}
