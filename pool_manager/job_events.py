"""Job events for long polls: one pub/sub connection per process, not one per poll.

A listener thread pattern-subscribes to every job's channel of the deployment and wakes
the threads awaiting that job. A connection per poll would cost a connect, a handshake,
a subscribe and an unsubscribe on every request.
"""

import logging
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from weakref import WeakSet

from redis import Redis, RedisError

log = logging.getLogger(__name__)
RECONNECT_PAUSE_S = 1.0
LISTEN_TIMEOUT_S = 1.0  # how often the listener looks up to see whether it should stop
_everyone: WeakSet["JobEvents"] = WeakSet()


def wake_every_waiter() -> None:
    """Wake every long poll of this process at once (its server is stopping)."""
    for events in list(_everyone):
        events._wake(None)


class JobEvents:
    def __init__(self, redis: Redis, channel_prefix: str):
        self.redis = redis
        self.prefix = channel_prefix  # a job's channel is prefix + job id
        self._waiters: dict[str, set[threading.Event]] = defaultdict(set)
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._closed = threading.Event()
        _everyone.add(self)

    @contextmanager
    def watch(self, job_id: str) -> Iterator[threading.Event]:
        """An event set whenever the job's record changes, or whenever events may have
        been missed (the listener (re)subscribed): re-read the job when it is set."""
        changed = threading.Event()
        with self._lock:
            self._start_listener()
            self._waiters[job_id].add(changed)
        try:
            yield changed
        finally:
            with self._lock:
                waiters = self._waiters[job_id]
                waiters.discard(changed)
                if not waiters:
                    del self._waiters[job_id]

    def _start_listener(self) -> None:
        """Started on first use, and again in a forked child (threads do not survive a fork)."""
        if self._listener is None or not self._listener.is_alive():
            self._listener = threading.Thread(target=self._listen, name="job-events", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        while not self._closed.is_set():
            try:
                with self.redis.pubsub() as pubsub:
                    pubsub.psubscribe(self.prefix + "*")
                    while not self._closed.is_set():
                        message = pubsub.get_message(timeout=LISTEN_TIMEOUT_S)
                        if message is None:
                            continue
                        if message["type"] == "pmessage":
                            self._wake(message["channel"].removeprefix(self.prefix))
                        elif message["type"] == "psubscribe":  # (re)subscribed: anything may have passed
                            self._wake(None)
            except RedisError as exc:
                log.warning("job events: %s; listening again in %.0fs", exc, RECONNECT_PAUSE_S)
                self._wake(None)
                self._closed.wait(RECONNECT_PAUSE_S)

    def close(self) -> None:
        """Stop listening (the process goes on without long polls)."""
        self._closed.set()
        if self._listener is not None:
            self._listener.join(LISTEN_TIMEOUT_S + 1)

    def wake(self, job_id: str) -> None:
        """Wake the job's waiters as if it had changed (they re-read it)."""
        self._wake(job_id)

    def _wake(self, job_id: str | None) -> None:
        """Wake the job's waiters, or everyone's (None)."""
        with self._lock:
            groups = self._waiters.values() if job_id is None else [self._waiters.get(job_id, ())]
            for waiters in groups:
                for changed in waiters:
                    changed.set()
