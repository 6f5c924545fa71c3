"""A Kubernetes API emulation over real HTTP for the tests: kmock's KubernetesEmulator
(an in-memory store with create, get, list, patch, delete and watch streams), taught the
few things of a real API server that greenroom relies on and kmock leaves out:

- server-set metadata: uid, creationTimestamp, a resourceVersion bumped on every write
  (watch clients resume from it);
- label selectors (`a=b,c=d`) on lists and watches.

It runs on a loopback port in a thread of its own, with its own event loop, so that
synchronous tests, and other processes through a kubeconfig file, can talk to it.
Nothing here patches the client library: greenroom's runtime speaks HTTP to it.
"""

import asyncio
import datetime
import itertools
import threading
import uuid
from pathlib import Path

import kmock

from conftest import free_port

PODS = "v1/pods"


def selector_matches(selector: str | None, labels: dict) -> bool:
    """Equality-based label selectors, the only kind greenroom sends."""
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


def _labels(obj) -> dict:
    return dict((obj.get("metadata") or {}).get("labels") or {})


class ApiServerEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus server-set metadata and label selectors."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.versions = itertools.count(1)
        self.resources[PODS] = {}

    async def _handle(self, request):
        if isinstance(request.data, dict) and request.action == kmock.action.CREATE:
            meta = request.data.setdefault("metadata", {})
            meta.update(uid=str(uuid.uuid4()), resourceVersion=str(next(self.versions)),
                        creationTimestamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta.setdefault("namespace", request.namespace)
        elif isinstance(request.data, dict) and request.action == kmock.action.UPDATE:
            request.data.setdefault("metadata", {})["resourceVersion"] = str(next(self.versions))
        return await super()._handle(request)

    async def _serve_list(self, request):
        listed = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        listed["items"] = [item for item in listed["items"] if selector_matches(selector, _labels(item))]
        listed["metadata"] = {"resourceVersion": str(next(self.versions))}
        return listed

    async def _serve_watch(self, request):
        selector = request.params.get("labelSelector")
        async for event in super()._serve_watch(request):
            if not isinstance(event, dict) or selector_matches(selector, _labels(event.get("object") or {})):
                yield event


class KubeApiServer:
    """The emulator on 127.0.0.1:<free port>, served from a thread."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.emulator: ApiServerEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="kube-api", daemon=True)

    def start(self) -> "KubeApiServer":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Kubernetes API emulation did not start")
        return self

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with ApiServerEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1", port=self.port):
            self.emulator = emulator
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def kubeconfig(self, path: Path, namespace: str) -> Path:
        """A kubeconfig naming this server (plain HTTP, no credentials), as users write them."""
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: emulation\n"
            f"clusters:\n- name: emulation\n  cluster:\n    server: {self.url}\n"
            "users:\n- name: tester\n  user: {}\n"
            f"contexts:\n- name: emulation\n  context:\n    cluster: emulation\n    user: tester\n"
            f"    namespace: {namespace}\n")
        return path
