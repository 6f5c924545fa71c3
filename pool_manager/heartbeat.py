"""One thread per process that renews every lease the process holds (a job's, a session
turn's), so that a worker that dies lets go of them within one lease period, and a
worker that lives never loses them while it works."""

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from redis import RedisError

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._held: dict[int, tuple[Callable[[], bool], threading.Event]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextmanager
    def keep(self, renew: Callable[[], bool]) -> Iterator[threading.Event]:
        """Call renew() every interval while the block runs; the event yielded is set once
        renew() answers False (the lease was lost: someone else holds it now)."""
        lost = threading.Event()
        with self._lock:
            self._start()
            self._held[id(lost)] = (renew, lost)
        try:
            yield lost
        finally:
            with self._lock:
                del self._held[id(lost)]

    def _start(self) -> None:
        """Started on first use, and again in a forked child (threads do not survive a fork)."""
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while True:
            time.sleep(self.interval_s)
            with self._lock:
                held = list(self._held.values())
            for renew, lost in held:
                try:
                    if not lost.is_set() and not renew():
                        lost.set()
                except RedisError as exc:  # the lease may lapse; fencing keeps that safe
                    log.warning("renewing a lease failed: %s", exc)
