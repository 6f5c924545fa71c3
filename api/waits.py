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
        admitted = self.enter(tenant)
        try:
            yield admitted
        finally:
            if admitted:
                self.leave(tenant)

    def enter(self, tenant: str) -> bool:
        """Count one more open wait of the tenant; False (nothing counted) over a cap."""
        with self._lock:
            if sum(self._open.values()) >= self.total or self._open[tenant] >= self.per_tenant:
                return False
            self._open[tenant] += 1
            return True

    def leave(self, tenant: str) -> None:
        with self._lock:
            self._open[tenant] -= 1
