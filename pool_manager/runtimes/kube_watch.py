"""The owner's pods as a list-then-watch keeps them, in a thread: readiness, pod IPs and
labels are read from memory the moment the API server tells of a change, with no API
call per probe (a boot watcher asks many times a second) and no polling of the server."""

import logging
import threading
import time
from collections.abc import Callable

from lightkube import Client
from lightkube.resources.core_v1 import Pod

from .kube_spec import PodView, pod_view

log = logging.getLogger(__name__)
SERVER_TIMEOUT_S = 300  # the server ends each watch after this; it is resumed at once
RETRY_S = (0.5, 10.0)  # after a failed list or watch: first pause, longest


class PodWatch:
    def __init__(self, connect: Callable[[], Client], namespace: str, labels: dict[str, str]):
        self._connect, self._namespace, self._labels = connect, namespace, labels
        self._pods: dict[str, PodView] = {}
        self._changed = threading.Condition()
        self._synced = threading.Event()  # the first list has been read
        self._stopped = threading.Event()
        self._client: Client | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching (once); returns at once."""
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kube-pod-watch", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._client is not None:
            self._client.close()  # ends a watch blocked on the stream

    def get(self, name: str) -> PodView | None:
        with self._changed:
            return self._pods.get(name)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until predicate() holds (checked at each change), at most timeout seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def synced(self, timeout: float) -> bool:
        """Whether the first list has been read, waiting at most timeout seconds."""
        return self._synced.wait(timeout)

    def gone(self, name: str) -> bool:
        return self._synced.is_set() and name not in self._pods

    # the thread
    def _run(self) -> None:
        pause = RETRY_S[0]
        while not self._stopped.is_set():
            try:
                self._client = self._connect()
                self._follow(self._list())
                pause = RETRY_S[0]
            except Exception as exc:  # the API's, the transport's, the config's: the thread must not die
                if self._client is not None:
                    self._client.close()
                if self._stopped.is_set():
                    return
                log.warning("watching pods in %s failed (%s); again in %.1fs", self._namespace, exc, pause)
                self._stopped.wait(pause)
                pause = min(pause * 2, RETRY_S[1])

    def _list(self) -> str:
        listed = self._client.list(Pod, namespace=self._namespace, labels=self._labels)
        pods = {view.name: view for view in map(pod_view, (pod.to_dict() for pod in listed))}
        with self._changed:
            self._pods = pods
            self._synced.set()
            self._changed.notify_all()
        return listed.resourceVersion

    def _follow(self, version: str) -> None:
        events = self._client.watch(Pod, namespace=self._namespace, labels=self._labels,
                                    resource_version=version, server_timeout=SERVER_TIMEOUT_S)
        for kind, pod in events:
            if self._stopped.is_set():
                return
            self._apply(kind, pod_view(pod.to_dict()))

    def _apply(self, kind: str, view: PodView) -> None:
        with self._changed:
            if kind == "DELETED":
                self._pods.pop(view.name, None)
            else:
                self._pods[view.name] = view
            self._changed.notify_all()
