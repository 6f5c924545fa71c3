"""A small test-side kubelet for the emulated API server (kube_emulation.py).

It watches the pods of one namespace over HTTP, as a kubelet does, and for each new pod:
gives it a loopback address of its own (127.x.y.z: every pod its own IP, as in a cluster,
so all of them can listen on the spec's port), starts the container's image as a local
process (an image maps to a command: the reference server for greenroom/chatbot), and
reports status: phase Running with the pod IP, then the Ready condition from the pod's
own readiness probe (httpGet path and port, every periodSeconds), phase Failed when the
process exits. Deletion is graceful: the kubelet holds a finalizer on each pod it runs and
lets go of it once the process is stopped, so a deleted pod lingers as Terminating until
then, as in a cluster.

What it does not emulate: users and groups, read-only roots, resource limits, network
policies, image pulls, node scheduling. Those are the cluster's, untested here.
"""

import itertools
import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

FINALIZER = "kubelet.test.greenroom/running"
MERGE = {"Content-Type": "application/merge-patch+json"}


class Kubelet:
    def __init__(self, api_url: str, namespace: str, images: dict[str, list[str]], folder: Path):
        self.namespace, self.images, self.folder = namespace, images, folder
        self.api = httpx.Client(base_url=f"{api_url}/api/v1/namespaces/{namespace}", timeout=10)
        prefix = f"127.{random.randint(100, 250)}"  # apart from other test sessions' kubelets
        self._ips = (f"{prefix}.{n // 250}.{n % 250 + 1}" for n in itertools.count())
        self.pods: dict[str, "PodRun"] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="kubelet", daemon=True)

    def start(self) -> "Kubelet":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        for run in list(self.pods.values()):
            run.terminate.set()
        for run in list(self.pods.values()):
            run.thread.join(10)
        self.api.close()

    def evict(self, name: str) -> None:
        """Node pressure: the kubelet stops the pod and marks it Failed, reason Evicted."""
        self.pods[name].evicted.set()

    def _watch(self) -> None:
        while not self._stopped.is_set():
            try:
                with self.api.stream("GET", "/pods", params={"watch": "true"}, timeout=None) as stream:
                    for line in stream.iter_lines():
                        if line.strip():
                            self._on_event(json.loads(line))
            except (httpx.HTTPError, RuntimeError):
                time.sleep(0.2)

    def _on_event(self, event: dict) -> None:
        pod = event["object"]
        name = pod["metadata"]["name"]
        with self._lock:
            run = self.pods.get(name)
            if run is None and event["type"] == "ADDED" and not pod["metadata"].get("deletionTimestamp"):
                self.pods[name] = PodRun(self, pod)
            elif run and (event["type"] == "DELETED" or pod["metadata"].get("deletionTimestamp")):
                run.terminate.set()

    def patch(self, name: str, body: dict, status: bool = False) -> None:
        path = f"/pods/{name}/status" if status else f"/pods/{name}"
        response = self.api.patch(path, content=json.dumps(body), headers=MERGE)
        if response.status_code not in (200, 404):  # 404: deleted meanwhile
            response.raise_for_status()


class PodRun:
    """One pod on the node: its process, its probe, its status."""

    def __init__(self, kubelet: Kubelet, pod: dict):
        self.kubelet, self.pod = kubelet, pod
        self.name = pod["metadata"]["name"]
        self.container = pod["spec"]["containers"][0]
        self.terminate, self.evicted = threading.Event(), threading.Event()
        self.ip = next(kubelet._ips)
        self.process: subprocess.Popen | None = None
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.kubelet.patch(self.name, {"metadata": {"finalizers": [FINALIZER]}})
            self.process = self._start()
            self._report("Running", ready=False)
            self._serve()
            self._stop_process()
            self.kubelet.patch(self.name, {"metadata": {"finalizers": None}})  # the pod may go now
        except httpx.HTTPError:
            pass  # the API server went away: the node goes with it
        finally:
            self._stop_process()

    def _start(self) -> subprocess.Popen:
        env = {item["name"]: item.get("value", "") for item in self.container.get("env", [])}
        env["HOST"] = self.ip  # the pod's own address stands in for its network namespace
        with open(self.kubelet.folder / f"{self.name}.log", "ab") as log:
            return subprocess.Popen(self.kubelet.images[self.container["image"]], env=os.environ | env,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)

    def _serve(self) -> None:
        """Probe readiness every period until the pod is deleted; report changes."""
        probe = self.container.get("readinessProbe") or {}
        period, ready = probe.get("periodSeconds", 10), False
        while not self.terminate.is_set():
            if self.evicted.is_set():
                self._stop_process()
                self._report("Failed", ready=False, reason="Evicted", exit_code=137)
                break
            if (code := self.process.poll()) is not None:
                self._report("Failed" if code else "Succeeded", ready=False, exit_code=code)
                break
            if self._probe(probe) != ready:
                ready = not ready
                self._report("Running", ready)
            self.terminate.wait(period)
        self.terminate.wait()

    def _probe(self, probe: dict) -> bool:
        get = probe.get("httpGet")
        if not get:
            return True
        port = get["port"]
        if isinstance(port, str):  # a named container port
            port = next(p["containerPort"] for p in self.container["ports"] if p.get("name") == port)
        try:
            return httpx.get(f"http://{self.ip}:{port}{get['path']}", timeout=probe.get("timeoutSeconds", 1)
                             ).status_code < 400
        except httpx.HTTPError:
            return False

    def _report(self, phase: str, ready: bool, reason: str | None = None, exit_code: int | None = None) -> None:
        flag = "True" if ready else "False"
        state = {"running": {}} if exit_code is None else {"terminated": {"exitCode": exit_code}}
        status = {"phase": phase, "podIP": self.ip, "podIPs": [{"ip": self.ip}], "hostIP": "127.0.0.1",
                  "conditions": [{"type": "Ready", "status": flag}, {"type": "ContainersReady", "status": flag}],
                  "containerStatuses": [{"name": self.container["name"], "ready": ready, "restartCount": 0,
                                         "image": self.container["image"], "imageID": "", "state": state}]}
        if reason:
            status["reason"] = reason
        self.kubelet.patch(self.name, {"status": status}, status=True)

    def _stop_process(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
