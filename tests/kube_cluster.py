"""A Kubernetes stand-in for the tests: the API emulation (kube_emulation.py) and a test
kubelet (kubelet.py) that runs the reference server for the image greenroom/chatbot."""

import sys
from pathlib import Path

import httpx
from kube_emulation import KubeApiServer
from kubelet import Kubelet

from pool_manager.runtimes.kubernetes import KubernetesRuntime
from pool_manager.settings import REFERENCE_SERVER

NAMESPACE = "greenroom-models"
IMAGES = {"greenroom/chatbot:latest": [sys.executable, str(REFERENCE_SERVER)]}


class KubeCluster:
    def __init__(self, folder: Path):
        self.api = KubeApiServer().start()
        self.kubeconfig = str(self.api.kubeconfig(folder / "kubeconfig", NAMESPACE))
        self.kubelet = Kubelet(self.api.url, NAMESPACE, IMAGES, folder).start()
        self.namespace = NAMESPACE

    def runtime(self, owner: str) -> KubernetesRuntime:
        return KubernetesRuntime(owner, namespace=NAMESPACE, kubeconfig=self.kubeconfig)

    def settings(self) -> dict:
        """The Settings fields that point greenroom at this cluster."""
        return {"kubeconfig": self.kubeconfig, "kubernetes_namespace": NAMESPACE}

    def pods(self, **labels: str) -> list[dict]:
        """The pods as `kubectl get pods -l k=v,...` shows them."""
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        response = httpx.get(f"{self.api.url}/api/v1/namespaces/{NAMESPACE}/pods",
                             params={"labelSelector": selector} if selector else {}, timeout=10)
        return response.json()["items"]

    def stop(self) -> None:
        self.kubelet.stop()
        self.api.stop()
