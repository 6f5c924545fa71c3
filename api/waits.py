"""How many long polls an API process holds open at once, in all and per tenant: past
either cap a new one is refused (the caller answers 429, or at once), so waiting clients
cannot crowd out the requests beside them. (Counted per process: the caps are what one
process can hold cheaply.)"""

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class OpenWaits:
    def __init__(self, total: int, per_tenant: int):
        self.total, self.per_tenant = total, per_tenant
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, tenant: str) -> Iterator[bool]:
        """Yields True while this wait is counted, False if a cap refused it."""
        with self._lock:
            admitted = sum(self._open.values()) < self.total and self._open[tenant] < self.per_tenant
            if admitted:
                self._open[tenant] += 1
        try:
            yield admitted
        finally:
            if admitted:
                with self._lock:
                    self._open[tenant] -= 1
